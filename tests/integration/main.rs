//! Integration tests: real nodes on loopback ports, real HTTP. One test binary (one link step on a 2-core machine).

mod chaos_checker;
mod cli;
mod cluster;
mod concurrency;
mod directories;
mod hardening;
mod interop;
mod ldap_auth;
mod login;
mod logout;
mod ops;
mod pages;
mod proxy;
mod replication;
mod rest;
mod saml;
mod service_files;
mod shutdown;
mod slo;
mod sql_auth;
mod storage;
mod support;
mod tls;
mod validate;
