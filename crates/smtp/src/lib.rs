//! Sans-IO ESMTP for mmsrelay: the server session ([`server`]), replies with enhanced status
//! codes ([`reply`]), and the thin tokio driver and listener ([`driver`]).

pub mod client;
pub mod client_driver;
pub mod driver;
pub mod reply;
pub mod server;
pub mod trace;

pub use reply::{codes, Reply};
pub use server::{
    BodyType, MailFrom, PeerInfo, Policy, RcptTo, ReceivedMessage, Ret, ServerConfig, Session, Step,
};
