//! netferry: rootless user-mode networking for network namespaces.
//!
//! A drop-in replacement for slirp4netns (a pasta front end is being
//! built: [`pasta`]). It joins a container's network
//! namespace, opens a tap there, and runs a userspace TCP/IP stack
//! (smoltcp) on it, so the container reaches the world through ordinary
//! sockets of the unprivileged user who runs netferry.
//!
//! The layers, top to bottom; each imports only from those below it
//! (`tests/layering.rs` holds that):
//!
//! - front ends, one per command line: [`cli`] and [`slirp4netns`] (the
//!   slirp4netns flags), [`pasta`] (pasta's), [`run`] (`netferry run`).
//!   Each validates its flags into one [`config::Config`]; none of them
//!   leaks below;
//! - [`config`]: what every front end produces, including the address
//!   plan ([`engine::AddressPlan`]): every address the guest sees and
//!   where it leads on the host;
//! - [`setup`]: namespace join, tap, interface configuration, fd passing,
//!   the sandbox; nearly all `unsafe` is here;
//! - [`event_loop`] (with [`api`], the JSON control socket, and
//!   [`busy_poll`], how it waits, and [`relay`], pasta's `-T`/`-U`
//!   ports carried socket to socket): one thread, `mio`, tap and control
//!   fds, timers;
//! - [`engine`]: frames in, frames out, against the address plan; the
//!   virtual hosts (gateway, DNS, DHCP) and smoltcp. No I/O and no clock
//!   of its own, so tests drive it with literal frames;
//! - [`host`]: what the engine asks of the host, behind a trait: real
//!   sockets ([`host::NetHost`]) or a simulation (`host::SimHost`);
//!   [`vnet`]: the virtio-net header of a tap with segmentation offload;
//!   [`pages`]: buffers mapped so that unused pages cost nothing.
//!
//! `fuzzing` holds the fuzz targets' harnesses (see `fuzz/`); it is no
//! part of the API. It and `host::SimHost` exist only in tests and with
//! the `test-support` feature, so a release build carries neither.

pub mod admin;
pub mod api;
pub mod busy_poll;
pub mod cli;
pub mod config;
pub mod engine;
pub mod event_loop;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod pages;
pub mod pasta;
pub mod relay;
pub mod resolv;
pub mod run;
pub mod setup;
pub mod slirp4netns;
pub mod tokens;
pub mod vnet;
