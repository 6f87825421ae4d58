//! End-to-end tests: a private redis-server and the real services on loopback ports.

mod api_errors;
mod archive;
mod browser;
mod deploy_manifests;
mod export_flow;
mod fleet;
mod gateway;
mod persistence;
mod public_api;
mod redis_tls;
mod support;
mod tidy;
mod web_app_tokens;
mod webapp_source;
mod worker_health;
