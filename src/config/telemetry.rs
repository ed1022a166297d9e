//! `[telemetry]`: where traces are exported and the service name they carry.

use serde::Deserialize;

use super::net::HttpUrl;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/HTTP traces endpoint (for example http://jaeger:4318/v1/traces); none: no
    /// export. Refused when it is not an `http(s)://` URL.
    pub otlp_endpoint: Option<HttpUrl>,
    pub service_name: String,
}
