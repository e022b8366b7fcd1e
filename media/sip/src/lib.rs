//! SIP for the branchgate box, sans-IO: the driver hands in messages and the
//! time and sends what comes out.

pub mod digest;
pub mod message;
pub mod server;
pub mod transaction;

pub use message::{Message, ParseError, StartLine, frame_len};
pub use server::{Flow, Incoming, Output, Server, ServerConfig, Transport, UserKeys};
