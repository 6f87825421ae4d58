//! The gateway's own `/metrics`: connections and what happened to the frames.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Default, Clone)]
pub struct GatewayMetrics {
    pub connections: Gauge,
    pub connections_refused: Counter,
    pub frames_sent: Counter,
    pub frames_coalesced: Counter,
    pub slow_closes: Counter,
    pub recoveries: Counter,
}

impl GatewayMetrics {
    /// OpenMetrics text of the current values.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("cellport_gateway");
        registry.register(
            "connections",
            "Open WebSocket connections",
            self.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "WebSocket upgrades refused with 429: the user held the most connections allowed",
            self.connections_refused.clone(),
        );
        registry.register(
            "frames_sent",
            "Event frames written to clients",
            self.frames_sent.clone(),
        );
        registry.register(
            "frames_coalesced",
            "Progress frames replaced by a newer one before a slow client read them",
            self.frames_coalesced.clone(),
        );
        registry.register(
            "slow_closes",
            "Connections closed with 4008 because the client could not keep up",
            self.slow_closes.clone(),
        );
        registry.register(
            "recoveries",
            "Times every connection re-read its jobs' latest events (Redis reconnects, missed events)",
            self.recoveries.clone(),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String does not fail");
        text
    }
}
