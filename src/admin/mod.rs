//! The administration commands: `netferry setup podman|docker` (make a
//! container engine run netferry, and `--undo` it) and `netferry doctor`
//! (check what rootless networking needs on this machine). They sit on top
//! with the other front ends, touch only configuration files and links,
//! and never start networking themselves.
//!
//! `places` says where each scope's files go, `record` keeps the list of
//! what a setup created so that its undo removes exactly that, `setup`
//! decides what to write for each engine, `doctor` runs the checks.

pub mod doctor;
pub mod places;
pub mod record;
pub mod setup;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// `netferry setup ...` and `netferry doctor`, as clap sees them.
#[derive(Debug, Parser)]
#[command(name = "netferry", disable_version_flag = true)]
struct Admin {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make podman or Docker rootless run netferry (or undo that).
    Setup(SetupArgs),
    /// Check what rootless networking needs here; exit 1 on any problem.
    Doctor,
}

/// The engine `setup` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    Podman,
    Docker,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
        }
    }

    pub fn other(self) -> Engine {
        match self {
            Engine::Podman => Engine::Docker,
            Engine::Docker => Engine::Podman,
        }
    }
}

/// Which program the engine starts as its rootless network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Pasta,
    Slirp4netns,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pasta => "pasta",
            Mode::Slirp4netns => "slirp4netns",
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "--user writes under ~/.config and ~/.local; --system under /etc, /usr/local \
                  and /var/lib (as root). Only new files, links and directories are made; \
                  --undo removes exactly those, and refuses if one changed since."
)]
pub struct SetupArgs {
    /// podman (4, 5 or 6) or docker (Docker rootless)
    #[arg(value_enum)]
    pub engine: Engine,
    /// For this user only (the default)
    #[arg(long, conflicts_with = "system")]
    pub user: bool,
    /// For every user of this machine
    #[arg(long)]
    pub system: bool,
    /// The network the engine starts; default: pasta for podman 5 and
    /// later, slirp4netns for podman 4 and Docker
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Remove what an earlier `netferry setup` of this engine and scope made
    #[arg(long, conflicts_with = "mode")]
    pub undo: bool,
}

/// Run `netferry setup ...` or `netferry doctor`; `argv` starts with the
/// subcommand's name.
pub fn main(argv: &[OsString]) -> ExitCode {
    let all = std::iter::once(OsString::from("netferry")).chain(argv.iter().cloned());
    let admin = match Admin::try_parse_from(all) {
        Ok(admin) => admin,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match admin.command {
        Command::Setup(args) => match setup::run(&args) {
            Ok(report) => {
                let _ = std::io::stdout().write_all(report.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "netferry setup: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Doctor => {
            let checks = doctor::run();
            let mut out = std::io::stdout();
            for c in &checks {
                let _ = writeln!(out, "{c}");
            }
            if checks.iter().all(doctor::Check::is_ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
