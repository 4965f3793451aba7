//! casd: a clustered CAS (Central Authentication Service) single sign-on server.
//!
//! # Layout
//! - [`config`]: the typed configuration, the embedded single-node default and its validation.
//! - [`ticket`]: ticket ids, what each kind holds, expiration policies. Pure.
//! - [`registry`]: the [`registry::TicketRegistry`] the protocol layer uses, over one [`registry::TicketMap`] per
//!   ticket kind. The seam where replicated maps plug in.
//! - [`cas`]: the HTTP endpoints of CAS 1.0/2.0/3.0 and SAML 1.1, pages, services, single logout, proxy callbacks.
//! - [`auth`]: the authenticator (users file with argon2id hashes) and login throttling.
//! - [`cluster`]: gossip membership, multicast discovery, sealing, and replication links between nodes.
//! - [`node`]: [`Node::start`] wires it all and returns a [`NodeHandle`].
//!
//! `cas` knows tickets and the registry, never the network between nodes.

pub mod auth;
pub mod cas;
pub mod cluster;
pub mod config;
pub mod node;
pub mod registry;
pub mod ticket;
pub mod tls;

pub use config::Config;
pub use node::{Node, NodeHandle, StartError};
