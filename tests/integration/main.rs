//! Integration tests: real nodes on loopback ports, real HTTP. One test binary (one link step on a 2-core machine).

mod chaos_checker;
mod cli;
mod cluster;
mod concurrency;
mod hardening;
mod interop;
mod login;
mod logout;
mod ops;
mod proxy;
mod replication;
mod rest;
mod saml;
mod shutdown;
mod slo;
mod storage;
mod support;
mod tls;
mod validate;
