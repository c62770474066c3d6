//! netferry: rootless user-mode networking for network namespaces.
//!
//! A drop-in replacement for slirp4netns. It joins a container's network
//! namespace, opens a tap there, and runs a userspace TCP/IP stack
//! (smoltcp) on it, so the container reaches the world through ordinary
//! sockets of the unprivileged user who runs netferry.
//!
//! The layers, top to bottom:
//!
//! - [`cli`] and [`config`]: the slirp4netns command line, validated into a
//!   [`config::Config`] with every address derived from the CIDR;
//! - [`setup`]: namespace join, tap, `-c`, fd passing; all `unsafe` is here;
//! - [`event_loop`]: one thread, `mio`, tap and control fds, timers;
//!   [`busy_poll`]: how it waits: spinning between requests and
//!   responses, pausing for batches while datagrams stream;
//! - [`engine`]: frames in, frames out; the virtual hosts (gateway, DNS,
//!   DHCP) and smoltcp. No I/O and no clock of its own, so tests drive it
//!   with literal frames;
//! - [`host`]: what the engine asks of the host, behind a trait: real
//!   sockets ([`host::NetHost`]) or a simulation ([`host::SimHost`]);
//! - [`api`]: the JSON control socket;
//! - [`vnet`]: the virtio-net header of a tap with segmentation offload.
//!
//! `fuzzing` holds the fuzz targets' harnesses (see `fuzz/`); it is no
//! part of the API.

pub mod api;
pub mod busy_poll;
pub mod cli;
pub mod config;
pub mod engine;
pub mod event_loop;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod pasta;
pub mod resolv;
pub mod run;
pub mod setup;
pub mod slirp4netns;
pub mod tokens;
pub mod vnet;
