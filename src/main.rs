//! The `netferry` binary: parse, set up, print the banner, signal ready,
//! run the loop. Setup failures exit 1 with a message that says what
//! failed; the loop's own ends (exit fd, signal, tap gone) exit 0.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use netferry::api::ApiServer;
use netferry::cli::{self, Parsed};
use netferry::config::{Config, Target};
use netferry::event_loop::{EventLoop, Exit};
use netferry::host::{self, Outbound};
use netferry::setup;
use netferry::slirp4netns::{self, ConfigError};

/// The host's resolver configuration, re-read when it changes.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Print to stdout or stderr without ever panicking: a caller that closed
/// the pipe must not turn a banner or a log line into an abort.
macro_rules! say {
    (out, $($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
    (err, $($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

// The engine catches a panic per frame so that a defect costs one flow,
// not the container's network (`Engine::guarded`); with abort it would
// end netferry.
#[cfg(panic = "abort")]
compile_error!("netferry must be built with panic = \"unwind\" (see Cargo.toml)");

fn main() -> ExitCode {
    throttle_panic_messages();
    // pasta's command line, when called by that name (a `pasta` link, as
    // podman and rootlesskit find it) or as `netferry pasta ARGS...`.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = argv
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    if Path::new(&argv0).file_name().is_some_and(|n| n == "pasta") {
        return netferry::pasta::daemon::main(&argv0, &argv[1..]);
    }
    if argv.get(1).is_some_and(|a| a == "pasta") {
        return netferry::pasta::daemon::main("pasta", &argv[2..]);
    }
    if argv.get(1).is_some_and(|a| a == "setup" || a == "doctor") {
        return netferry::admin::main(&argv[1..]);
    }
    if argv.get(1).is_some_and(|a| a == "help")
        && let Some(command) = argv.get(2).filter(|a| *a == "setup" || *a == "doctor")
    {
        return netferry::admin::main(&[command.clone(), "--help".into()]);
    }
    if argv.get(1).is_some_and(|a| a == "help") && argv.get(2).is_some_and(|a| a == "pasta") {
        return netferry::pasta::daemon::main("pasta", &["--help".into()]);
    }
    let args = match cli::parse(std::env::args_os()) {
        Parsed::Print(text) => {
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Parsed::Usage(text) => {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
            return ExitCode::FAILURE;
        }
        Parsed::RunUsage(text) => {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
            return ExitCode::from(netferry::run::STATUS_FAILED);
        }
        Parsed::Run(args) => args,
        Parsed::Status(socket) => {
            return match netferry::api::status_text(&socket) {
                Ok(text) => {
                    say!(out, "{}", text.trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say!(err, "netferry status: {}", status_error(&socket, &e));
                    ExitCode::FAILURE
                }
            };
        }
        Parsed::RunCommand(args) => {
            // The terminal is the command's: only warnings unless asked.
            init_logging_at(if args.debug { "debug" } else { "warn" });
            return match netferry::run::run_command(&args) {
                // An exit status is a byte; the shell's 128+N convention
                // for signals fits.
                Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
                Err(e) => {
                    say!(err, "netferry run: {e:#}");
                    ExitCode::from(netferry::run::STATUS_FAILED)
                }
            };
        }
    };
    let cfg = match slirp4netns::config(&args) {
        Ok(cfg) => cfg,
        Err(ConfigError::MissingArguments) => {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), cli::usage().as_bytes());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            say!(err, "{e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(cfg.debug);
    match serve_slirp4netns(&cfg) {
        // Cleanup is done (the API socket is gone); now die by the signal,
        // as slirp4netns does, so callers see the status they expect.
        Ok(Exit::Signal(sig)) => setup::die_by(sig),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            say!(err, "netferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Print the first panics in full, then one in a thousand: a defect a
/// guest trips on every frame is caught (and counted) by the engine, and
/// must not fill the log either.
fn throttle_panic_messages() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PANICS: AtomicU64 = AtomicU64::new(0);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let n = PANICS.fetch_add(1, Ordering::Relaxed);
        if n < 10 || n.is_multiple_of(1000) {
            default(info);
        }
    }));
}

fn init_logging(debug: bool) {
    init_logging_at(if debug { "debug" } else { "info" });
}

fn init_logging_at(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .target(env_logger::Target::Stderr)
        .init();
}

fn serve_slirp4netns(cfg: &Config) -> anyhow::Result<Exit> {
    // Resolved before joining anything, so a bad value fails fast.
    let outbound = Outbound {
        v4: cfg
            .outbound_addr
            .as_deref()
            .map(host::resolve_outbound_v4)
            .transpose()?,
        v6: cfg
            .outbound_addr6
            .as_deref()
            .map(host::resolve_outbound_v6)
            .transpose()?,
    };
    // Its errors say what is wrong themselves (a missing API directory, a
    // path that is no namespace); they are no failure to get the tap.
    setup::precheck(cfg)?;
    let (tap, offload) = setup::obtain_tap(cfg).context("cannot get the tap device")?;
    setup::prefer_mmap_for_buffers();
    match setup::raise_fd_limit() {
        Ok(limit) => log::debug!("open file limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open file limit: {e}"),
    }
    let tap_desc = match (&cfg.target, &cfg.tap_name) {
        (Target::TapFd(fd), _) => format!("tap fd {fd}"),
        (_, Some(name)) => name.clone(),
        (_, None) => "tap".to_string(),
    };
    let engine_cfg = cfg.engine_config();
    let api = match &cfg.api_socket {
        Some(path) => Some(ApiServer::bind(path).context("cannot create the API socket")?),
        None => None,
    };
    let api_dir = api.as_ref().map(ApiServer::dir_fd);
    let host = (outbound, Path::new(RESOLV_CONF));
    let mut event_loop = EventLoop::new(
        (tap, offload),
        (&engine_cfg, cfg.busy_poll),
        host,
        cfg.exit_fd,
        api,
    )
    .context("cannot start the event loop")?;
    setup::lock_down(cfg, &setup::seccomp::Scope::here(None, api_dir))?;

    // The warnings (host loopback reachable, deprecated flags) only once
    // netferry is about to serve: before an unrelated startup error they
    // would read as its cause.
    for w in &cfg.warnings {
        say!(err, "{w}");
    }
    print_banner(cfg, &tap_desc);
    setup::release_startup_memory();
    if let Some(fd) = cfg.ready_fd {
        setup::signal_ready(fd).with_context(|| format!("cannot write to ready fd {fd}"))?;
    }
    let exit = event_loop.run()?;
    log::debug!("event loop ended: {exit:?}");
    Ok(exit)
}

/// What went wrong asking `socket` for the status, and what to do.
fn status_error(socket: &Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let path = socket.display();
    let hint = match e.kind() {
        ErrorKind::NotFound => {
            format!(" (is a netferry running with --api-socket {path}?)")
        }
        ErrorKind::ConnectionRefused => " (nothing listens there: has netferry ended?)".into(),
        ErrorKind::PermissionDenied => " (run as the user netferry runs as)".into(),
        _ => String::new(),
    };
    format!("cannot get the status from {path}: {e}{hint}")
}

fn print_banner(cfg: &Config, tap: &str) {
    say!(out, "{}", slirp4netns::banner(cfg, tap));
}
