//! The slirp4netns-compatible command line.
//!
//! This is the only place that knows how flags are spelled. The clap
//! definition below is the single source for `--help` and for the man page
//! (`man/netferry.1`, checked by a test). Values are taken as strings and
//! validated in `config.rs`, so every error message matches slirp4netns
//! byte for byte instead of clap's wording.

use clap::{ArgAction, CommandFactory, Parser};

/// First line of `--version`; callers parse the lines after it.
pub const VERSION_TEXT: &str = concat!(
    "netferry version ",
    env!("CARGO_PKG_VERSION"),
    "\nsmoltcp: 0.14\nSLIRP_CONFIG_VERSION_MAX: 4\n"
);

/// The flags podman and rootlesskit grep `--help` for to detect
/// features: `--help` must keep naming each.
pub const CALLER_GREPS: [&str; 12] = [
    "--netns-type",
    "--userns-path",
    "--mtu",
    "--cidr",
    "--disable-host-loopback",
    "--api-socket",
    "--enable-sandbox",
    "--enable-seccomp",
    "--enable-ipv6",
    "--outbound-addr",
    "--disable-dns",
    "--macaddress",
];

const USAGE: &str = "netferry [OPTION]... PID|PATH|FD [TAPNAME]\n       \
netferry run [OPTIONS] [--] [CMD [ARGS]...]\n       \
netferry status API_SOCKET\n       \
netferry pasta [OPTION]... (or invoked as pasta)\n       \
netferry setup podman|docker [--user|--system] [--undo]\n       \
netferry doctor";

/// After the options of `--help`: the other commands. Callers grep the
/// help for flags only, so this adds nothing they could misread.
const COMMANDS: &str = "Commands:
  run     run a command in new namespaces networked by netferry (netferry run --help)
  status  show what the netferry serving an API socket is doing (netferry status --help)
  pasta   pasta's command line, also when invoked by the name pasta (netferry pasta --help)
  setup   make podman or Docker rootless use netferry, or undo that (netferry setup --help)
  doctor  check what rootless networking needs on this machine, with fixes
  help    this help; netferry help run|status|pasta|setup|doctor: that command's";

const ABOUT: &str = "User-mode networking for unprivileged network namespaces.\n\
A drop-in replacement for slirp4netns: it creates TAPNAME inside the network \
namespace of PID (or the namespace file PATH, or adopts the tap file \
descriptor FD) and carries the namespace's traffic through ordinary host \
sockets.";

/// Raw command-line values, before validation.
#[derive(Parser, Debug, Default)]
#[command(
    name = "netferry",
    override_usage = USAGE,
    about = ABOUT,
    after_help = COMMANDS,
    disable_version_flag = true,
    // Our own -h so the help text reads like slirp4netns's.
    disable_help_flag = true,
    max_term_width = 100
)]
pub struct Args {
    /// bring up the interface: lo and TAPNAME up, MTU, address (network+100), default route via the gateway
    #[arg(short = 'c', long = "configure")]
    pub configure: bool,

    /// specify the FD for terminating netferry (exit 0 when it hangs up)
    #[arg(
        short = 'e',
        long = "exit-fd",
        value_name = "FD",
        allow_hyphen_values = true
    )]
    pub exit_fd: Option<String>,

    /// specify the FD to write "1" to when the network is ready
    #[arg(
        short = 'r',
        long = "ready-fd",
        value_name = "FD",
        allow_hyphen_values = true
    )]
    pub ready_fd: Option<String>,

    /// specify MTU (default=1500, max=65521)
    #[arg(
        short = 'm',
        long = "mtu",
        value_name = "MTU",
        allow_hyphen_values = true
    )]
    pub mtu: Option<String>,

    /// enable IPv6
    #[arg(short = '6', long = "enable-ipv6")]
    pub enable_ipv6: bool,

    /// specify API socket path
    #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
    pub api_socket: Option<String>,

    /// specify network address CIDR (default=10.0.2.0/24)
    #[arg(long = "cidr", value_name = "CIDR")]
    pub cidr: Option<String>,

    /// IPv6 prefix of the network with -6, always a /64 (default=fd00::/64)
    #[arg(long = "cidr6", value_name = "PREFIX/64")]
    pub cidr6: Option<String>,

    /// prohibit connecting to 127.0.0.1:* on the host namespace
    #[arg(long = "disable-host-loopback")]
    pub disable_host_loopback: bool,

    /// deprecated alias of --disable-host-loopback
    #[arg(long = "no-host-loopback", hide = true)]
    pub no_host_loopback: bool,

    /// specify network namespace type ([pid|path|tapfd], default=pid)
    #[arg(long = "netns-type", value_name = "TYPE")]
    pub netns_type: Option<String>,

    /// specify user namespace path
    #[arg(long = "userns-path", value_name = "PATH")]
    pub userns_path: Option<String>,

    /// create a new mount namespace and drop all caps except CAP_NET_BIND_SERVICE
    #[arg(long = "enable-sandbox")]
    pub enable_sandbox: bool,

    /// deprecated alias of --enable-sandbox
    #[arg(long = "create-sandbox", hide = true)]
    pub create_sandbox: bool,

    /// enable seccomp to limit syscalls
    #[arg(long = "enable-seccomp")]
    pub enable_seccomp: bool,

    /// sets outbound IPv4 address (or interface) that host sockets bind to
    #[arg(long = "outbound-addr", value_name = "IPv4|IFNAME")]
    pub outbound_addr: Option<String>,

    /// sets outbound IPv6 address (or interface) that host sockets bind to
    #[arg(long = "outbound-addr6", value_name = "IPv6|IFNAME")]
    pub outbound_addr6: Option<String>,

    /// disables the DNS address (network+3) to host DNS redirect
    #[arg(long = "disable-dns")]
    pub disable_dns: bool,

    /// specify the MAC address of the TAP (only valid with -c)
    #[arg(long = "macaddress", value_name = "MAC")]
    pub macaddress: Option<String>,

    /// specify the target type ([netns|bess], default=netns)
    #[arg(long = "target-type", value_name = "TYPE")]
    pub target_type: Option<String>,

    /// do not use the tap's segmentation offload (virtio-net header, TSO)
    #[arg(long = "disable-offload")]
    pub disable_offload: bool,

    /// microseconds to keep polling before sleeping while traffic is dense (default 50, 0 = never)
    #[arg(long = "busy-poll", value_name = "MICROSECONDS")]
    pub busy_poll: Option<String>,

    /// size in bytes of each per-connection TCP buffer, each direction (default 1048576)
    #[arg(long = "tcp-buffer", value_name = "BYTES")]
    pub tcp_buffer: Option<String>,

    /// most TCP connections at once; past it the connect pending longest gives way, or with none pending the SYN gets RST (default 16384)
    #[arg(long = "max-tcp-flows", value_name = "N")]
    pub max_tcp_flows: Option<String>,

    /// most TCP connections whose host connect is still under way (default 1024)
    #[arg(long = "max-pending-connects", value_name = "N")]
    pub max_pending_connects: Option<String>,

    /// seconds an idle UDP or ICMP echo flow is kept (default 120)
    #[arg(long = "udp-timeout", value_name = "SECONDS")]
    pub udp_timeout: Option<String>,

    /// log more (the same as RUST_LOG=debug)
    #[arg(long = "debug")]
    pub debug: bool,

    /// show this help and exit
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,

    /// show version and exit
    #[arg(short = 'v', long = "version")]
    pub version: bool,

    /// PID|PATH|FD, then TAPNAME; extra arguments are ignored with a warning
    #[arg(value_name = "ARGS", num_args = 0..)]
    pub positional: Vec<String>,
}

/// The clap command: the source of `--help` and the man page.
pub fn command() -> clap::Command {
    Args::command()
}

const RUN_ABOUT: &str = "Run CMD (default: $SHELL) as an unprivileged user in new user, network and \
mount namespaces, networked by netferry: tap0 gets 10.0.2.100 and (unless --no-ipv6) an IPv6 \
address by SLAAC, usable before CMD starts; /etc/resolv.conf names 10.0.2.3 inside, and netferry \
exits with CMD's status when it ends (125: netferry failed, 126: CMD not executable, 127: CMD not \
found, 128+N: CMD killed by signal N).";

const RUN_USAGE: &str = "netferry run [OPTIONS] [--] [CMD [ARGS]...]";

/// `netferry run`: raw values, before validation. Options come first:
/// the first argument that is not one (or anything after `--`) starts
/// CMD, and an unknown option is an error, never a command.
#[derive(Parser, Debug, Default)]
#[command(
    name = "netferry run",
    override_usage = RUN_USAGE,
    about = RUN_ABOUT,
    disable_version_flag = true,
    disable_help_flag = true,
    max_term_width = 100
)]
pub struct RunArgs {
    /// publish a port: [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]; ports may be ranges (8000-8009:80-89), IPv6 host addresses in brackets
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,

    /// also open the API socket at PATH
    #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
    pub api_socket: Option<String>,

    /// network address CIDR (default=10.0.2.0/24)
    #[arg(long = "cidr", value_name = "CIDR")]
    pub cidr: Option<String>,

    /// IPv6 prefix, always a /64 (default=fd00::/64)
    #[arg(long = "cidr6", value_name = "PREFIX/64")]
    pub cidr6: Option<String>,

    /// IPv4 only
    #[arg(long = "no-ipv6")]
    pub no_ipv6: bool,

    /// keep the caller's own user and group ids inside (default: map the caller to root)
    #[arg(long = "map-user")]
    pub map_user: bool,

    /// MTU of tap0 (default 65520, max 65521)
    #[arg(short = 'm', long = "mtu", value_name = "MTU")]
    pub mtu: Option<String>,

    /// the gateway does not lead to the host's loopback
    #[arg(long = "disable-host-loopback")]
    pub disable_host_loopback: bool,

    /// do not serve the DNS address (network+3); CMD sees the host's own /etc/resolv.conf
    #[arg(long = "disable-dns")]
    pub disable_dns: bool,

    /// IPv4 address (or interface) that host sockets bind to
    #[arg(long = "outbound-addr", value_name = "IPv4|IFNAME")]
    pub outbound_addr: Option<String>,

    /// IPv6 address (or interface) that host sockets bind to
    #[arg(long = "outbound-addr6", value_name = "IPv6|IFNAME")]
    pub outbound_addr6: Option<String>,

    /// do not lock netferry into its own mount namespace with no capabilities (on by default)
    #[arg(long = "no-sandbox")]
    pub no_sandbox: bool,

    /// do not filter netferry's system calls (on by default)
    #[arg(long = "no-seccomp")]
    pub no_seccomp: bool,

    /// log more (the same as RUST_LOG=debug)
    #[arg(long = "debug")]
    pub debug: bool,

    /// show this help and exit
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,

    /// show version and exit
    #[arg(short = 'v', long = "version")]
    pub version: bool,

    /// the command and its arguments: the first argument that is not an option, or everything after --
    #[arg(value_name = "CMD", trailing_var_arg = true)]
    pub cmd: Vec<String>,
}

/// `netferry status` has one argument and no options.
pub const STATUS_USAGE: &str = "Usage: netferry status API_SOCKET\n\n\
Show what the netferry serving API_SOCKET is doing: forwards, flows by \
protocol, bytes each way, frames dropped and connections refused at a cap.\n";

/// The `run` subcommand's clap command: the source of its `--help` and
/// of its part of the man page.
pub fn run_subcommand() -> clap::Command {
    RunArgs::command()
}

/// What the command line asks for before any validation.
pub enum Parsed {
    /// Run with these arguments.
    Run(Box<Args>),
    /// `netferry run ...`.
    RunCommand(Box<RunArgs>),
    /// `netferry status API_SOCKET`.
    Status(std::path::PathBuf),
    /// Print this text on stdout and exit 0 (help or version).
    Print(String),
    /// Print this text on stderr and exit 1 (unknown flag, missing value).
    Usage(String),
    /// `netferry run` with a bad option: print this on stderr and exit
    /// 125, the status `run` gives when netferry itself fails.
    RunUsage(String),
}

/// Parse argv without exiting, so that main decides exit codes (clap
/// would exit 2 where slirp4netns callers expect 1).
pub fn parse<I, T>(argv: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    // A subcommand only as the very first argument: a PID, path or fd
    // never reads "run" there, and every slirp4netns command line stays
    // as it was.
    if argv.get(1).is_some_and(|a| a == "help") {
        return match argv.get(2).and_then(|a| a.to_str()) {
            None => Parsed::Print(usage()),
            Some("run") => Parsed::Print(run_subcommand().render_help().to_string()),
            Some("status") => Parsed::Print(STATUS_USAGE.to_string()),
            Some(other) => Parsed::Usage(format!(
                "netferry help: no command {other:?}; the commands are run, status, pasta, setup and doctor\n"
            )),
        };
    }
    if argv.get(1).is_some_and(|a| a == "status") {
        return match argv.get(2) {
            Some(a) if a == "-h" || a == "--help" => Parsed::Print(STATUS_USAGE.to_string()),
            Some(a) if argv.len() == 3 && !a.to_string_lossy().starts_with('-') => {
                Parsed::Status(a.into())
            }
            _ => Parsed::Usage(STATUS_USAGE.to_string()),
        };
    }
    if argv.get(1).is_some_and(|a| a == "run") {
        return match RunArgs::try_parse_from(argv.iter().skip(1)) {
            Ok(args) if args.version => Parsed::Print(VERSION_TEXT.to_string()),
            Ok(args) => Parsed::RunCommand(Box::new(args)),
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
                Parsed::Print(e.render().to_string())
            }
            Err(e) => Parsed::RunUsage(e.render().to_string()),
        };
    }
    match Args::try_parse_from(argv) {
        Ok(args) if args.version => Parsed::Print(VERSION_TEXT.to_string()),
        Ok(args) => Parsed::Run(Box::new(args)),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            Parsed::Print(e.render().to_string())
        }
        Err(e) => Parsed::Usage(format!("{}\n{}", e.render(), command().render_usage())),
    }
}

/// Usage text printed when arguments are missing.
pub fn usage() -> String {
    command().render_help().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help() -> String {
        match parse(["netferry", "--help"]) {
            Parsed::Print(s) => s,
            _ => panic!("--help did not print"),
        }
    }

    #[test]
    fn help_names_every_feature_callers_grep_for() {
        let help = help();
        for flag in CALLER_GREPS {
            assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        }
        assert!(help.contains("-h, --help"));
    }

    #[test]
    fn short_help_prints_too() {
        assert!(matches!(parse(["netferry", "-h"]), Parsed::Print(_)));
    }

    #[test]
    fn version_has_config_version_line() {
        let Parsed::Print(text) = parse(["netferry", "-v"]) else {
            panic!("-v did not print");
        };
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("netferry version "));
        assert!(text.lines().any(|l| l == "SLIRP_CONFIG_VERSION_MAX: 4"));
        assert!(matches!(parse(["netferry", "--version"]), Parsed::Print(_)));
    }

    #[test]
    fn grouped_short_flags_and_both_value_forms() {
        let Parsed::Run(a) = parse([
            "netferry",
            "-c6",
            "--mtu=65520",
            "-e",
            "3",
            "-r4",
            "1",
            "tap0",
        ]) else {
            panic!("did not parse");
        };
        assert!(a.configure && a.enable_ipv6);
        assert_eq!(a.mtu.as_deref(), Some("65520"));
        assert_eq!(a.exit_fd.as_deref(), Some("3"));
        assert_eq!(a.ready_fd.as_deref(), Some("4"));
        assert_eq!(a.positional, ["1", "tap0"]);
    }

    #[test]
    fn unknown_flag_is_a_usage_error() {
        assert!(matches!(
            parse(["netferry", "--bogus", "1", "tap0"]),
            Parsed::Usage(_)
        ));
    }

    #[test]
    fn negative_fd_reaches_validation() {
        let Parsed::Run(a) = parse(["netferry", "-e", "-1", "1", "tap0"]) else {
            panic!("did not parse");
        };
        assert_eq!(a.exit_fd.as_deref(), Some("-1"));
    }
}
