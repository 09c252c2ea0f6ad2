//! Operations: Prometheus metrics, the `/metrics` `/healthz` `/readyz` HTTP server, readiness,
//! broker lag and the backlog estimate autoscaling uses.

pub mod backlog;
pub mod health;
pub mod http;
pub mod lag;
pub mod metrics;
