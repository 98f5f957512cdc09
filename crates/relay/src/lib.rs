//! The MMS Relay/Server: configuration, who is who, the inbound pipeline.

pub mod abandoned;
pub mod api;
pub mod cdr;
pub mod clock;
pub mod config;
pub mod console;
pub mod dialect;
pub mod directory;
pub mod dns;
pub mod events;
pub mod inbound;
pub mod keys;
pub mod live;
pub mod maillog;
pub mod metrics;
pub mod originate;
pub mod outbound;
pub mod peer_tls;
pub mod profile;
pub mod records;
pub mod reload;
pub mod routing;
pub mod sightings;
pub mod submit;
pub mod tls;
pub mod traffic;
