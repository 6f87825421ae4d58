//! Test support: a private `redis-server`, PostgreSQL and S3-compatible server per test,
//! a headless Chromium (`browser`), `wait_until`, loopback listeners, a JWT secret.
//!
//! Every test gets its own Redis on a free port in a temp dir (never the shared one on 6379),
//! optionally with AOF for persistence tests, and can kill or restart it for real. A test of the
//! web app's database gets its own PostgreSQL cluster the same way (never the one on 5432), with
//! the web app's tables made by `PostgresServer::create_webapp_database`.

pub mod bench;
pub mod browser;
pub mod s3;

use std::future::Future;
use std::time::Duration;

pub use cellport_runtime::JwtSecret;
pub use cellport_runtime::postgres::{PostgresOptions, PostgresServer, WEBAPP_SCHEMA};
pub use cellport_runtime::redis::{RedisOptions, RedisServer};
pub use cellport_runtime::webapp;
pub use s3::S3Server;

/// The signing secret of services under test (as long as the services require).
pub const TEST_JWT_SECRET: &str = "cellport-test-signing-secret-0123456789";

/// [`TEST_JWT_SECRET`] as the services take it.
pub fn jwt_secret() -> JwtSecret {
    JwtSecret::new(TEST_JWT_SECRET).expect("the test secret is long enough")
}

/// Polls `predicate` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut predicate: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if predicate().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A listener on a free loopback port, for services under test.
pub async fn local_listener() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}
