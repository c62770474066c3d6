//! The mio token ranges, defined once.
//!
//! The event loop's own fds sit at the bottom, flows (their host sockets)
//! take one token each from `FLOW_BASE`, the relay's sockets (pasta's
//! `-T`/`-U`) the range above them, and API connections sit above
//! everything. All values fit a 32-bit `usize`.

use mio::Token;

pub const TAP: Token = Token(0);
pub const EXIT_FD: Token = Token(1);
pub const SIGNALS: Token = Token(2);
pub const API_LISTENER: Token = Token(3);
pub const NETNS_WATCH: Token = Token(4);
/// Flow `id` is watched under `Token(FLOW_BASE + id)`.
pub const FLOW_BASE: usize = 16;
/// Flow tokens stay below this.
pub const FLOW_END: usize = 1 << 29;
/// The relay's sockets: `RELAY_BASE..RELAY_END`.
pub const RELAY_BASE: usize = FLOW_END;
pub const RELAY_END: usize = 1 << 30;
/// API connections use the tokens from here on.
pub const API_CONN_BASE: usize = RELAY_END;

/// The flow a token belongs to, if it is a flow token.
pub fn flow_of(token: Token) -> Option<usize> {
    (FLOW_BASE..FLOW_END)
        .contains(&token.0)
        .then(|| token.0 - FLOW_BASE)
}

pub fn of_flow(id: usize) -> Token {
    Token(FLOW_BASE + id)
}
