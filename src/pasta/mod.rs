//! pasta's command line, for netferry's pasta front end.
//!
//! netferry behaves as pasta when `argv[0]`'s basename is `pasta` or when run
//! as `netferry pasta ARGS...`, so that podman, rootlesskit and Docker can
//! use it in pasta's place. This module turns that command line into typed
//! [`cli::PastaArgs`] with pasta's option syntax and its exact error texts
//! (callers parse them): [`cli`] the options, [`ports`] the `-t`/`-u`/
//! `-T`/`-U` specs; [`daemon`] serves it, and [`command`] runs
//! `pasta [CMD]` in new namespaces on it.

mod args;
pub mod cli;
mod command;
pub mod daemon;
mod forward;
mod getopt;
mod options;
pub mod ports;
#[cfg(test)]
mod tests;
mod values;
