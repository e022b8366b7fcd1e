//! STUN and TURN for the branchgate box, sans-IO: no sockets, no clock.
//! The driver (`branchgate-turn-relay`) owns the sockets and feeds this crate
//! datagrams and the time.

pub mod auth;
pub mod policy;
pub mod server;
pub mod stun;

pub use server::{Budget, Family, FiveTuple, Forward, Output, Server, ServerConfig, Transport, UserKey, frame_len};
