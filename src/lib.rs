//! casd: a clustered CAS (Central Authentication Service) single sign-on server.
//!
//! # Layout (each layer imports only those below it)
//! - [`node`]: [`Node::start`] wires it all and returns a [`NodeHandle`]; [`sweeper`] expires tickets.
//! - [`config`]: the typed configuration, the embedded single-node default, and its resolution into the settings
//!   of the layers below (compiled service patterns, loaded users and cluster key).
//! - [`ops`]: `/metrics`, `/health`, `/ready`, `/cluster`: the operators' endpoints, which see `cas` and `cluster`.
//! - [`cas`]: the HTTP endpoints of CAS 1.0/2.0/3.0 and SAML 1.1, pages, services, single logout, proxy callbacks.
//!   Knows tickets and the registry, never the cluster.
//! - [`http`] and [`tls`]: the listener (plain or TLS) with graceful draining, and certificate reloading.
//! - [`auth`]: the authenticator (users file with argon2id hashes) and login throttling.
//! - [`registry`]: the [`registry::TicketRegistry`] the protocol layer uses, over one [`registry::TicketMap`] per
//!   ticket kind: local maps on a single node, replicated maps in a cluster.
//! - [`store`]: the node's journal on disk (sealed, group-committed), from which the TGT and PGT maps are restored
//!   at start and to which they record every change.
//! - [`cluster`]: gossip membership, multicast discovery, sealing, and replication between nodes; knows bytes,
//!   members and maps, never CAS.
//! - [`ticket`]: ticket ids, what each kind holds, expiration policies. Pure.
//! - [`clock`] and [`accept`]: the wall clock and the accept loop shared by every listener, at the bottom.

pub mod accept;
pub mod auth;
pub mod cas;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod http;
pub mod node;
pub mod ops;
pub mod registry;
pub mod store;
pub mod sweeper;
pub mod ticket;
pub mod tls;

pub use config::Config;
pub use node::{Node, NodeHandle, StartError};
