//! HTTP client of the operator API, used by the CLI and by tests: tries each endpoint in turn
//! until one answers, and turns error answers into [`ClientError::Api`] with the server's code.

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_protocol::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("no endpoint answered ({0})")]
    Unreachable(String),
    #[error("unexpected answer from {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
}

impl ClientError {
    /// The server's stable error code, if the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    endpoints: Vec<String>,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// `endpoints` are `host:port` of coordinators' APIs (an `http://` prefix is accepted).
    pub fn new(endpoints: Vec<String>, token: String, timeout: Duration) -> Client {
        let endpoints =
            endpoints.into_iter().map(|e| e.trim_start_matches("http://").trim_end_matches('/').to_string()).collect();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client without TLS always builds");
        Client { endpoints, token, http }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::DELETE, path, None).await
    }

    /// Sends a request to the first endpoint that answers. Only a failure to connect moves on to
    /// the next endpoint: once a server answered, its answer is final (a write may have been
    /// applied, and retrying is the caller's decision, made safe by request ids).
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut failures = Vec::new();
        for ep in &self.endpoints {
            let mut req = self.http.request(method.clone(), format!("http://{ep}{path}")).bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() => {
                    failures.push(format!("{ep}: {e}"));
                    continue;
                }
                Err(e) => return Err(ClientError::Unreachable(format!("{ep}: {e}"))),
            };
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable(format!("{ep}: {e}")))?;
            if status.is_success() {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::Protocol { endpoint: ep.clone(), reason: e.to_string() });
            }
            return match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => Err(ClientError::Api { status: status.as_u16(), code: e.code, message: e.message }),
                Err(_) => Err(ClientError::Protocol {
                    endpoint: ep.clone(),
                    reason: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
                }),
            };
        }
        Err(ClientError::Unreachable(if failures.is_empty() {
            "no endpoints given".into()
        } else {
            failures.join("; ")
        }))
    }
}
