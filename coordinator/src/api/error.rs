//! API errors: each maps to an HTTP status and a JSON body with a stable code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use switchyard_protocol::api::{ErrorBody, InvalidRequest};
use switchyard_protocol::Rejection;
use switchyard_storage::{NodeId, NodeInfo};

use crate::migration::ReportError;
use crate::node::NodeError;

#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Rejected(Rejection),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "missing or unknown bearer token; send `Authorization: Bearer <token>`, or present a client certificate \
         listed in the coordinators' client_certificates"
    )]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooManyStreams(String),
    #[error("{0}")]
    NotFound(String),
    #[error("this node is not the leader{}", .leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_else(|| " and no leader is known yet; retry shortly".into()))]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Conflict(String),
    /// An agent's migration report answers a phase the migration is no longer in.
    #[error("{0}")]
    StaleReport(String),
    #[error("{0}")]
    Unavailable(String),
    /// A subscriber follows another cluster than this one.
    #[error("{0}")]
    ClusterMismatch(String),
    #[error("{0}")]
    Internal(String),
}

/// Marks a response that a follower may forward to the leader.
#[derive(Clone, Debug)]
pub struct LeaderHint(pub String);

impl ApiError {
    pub fn code(&self) -> &str {
        match self {
            ApiError::Rejected(r) => r.code(),
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooManyStreams(_) => "too_many_streams",
            ApiError::NotFound(_) => "not_found",
            ApiError::NotLeader { .. } => "not_leader",
            ApiError::Conflict(_) => "conflict",
            ApiError::StaleReport(_) => "stale_report",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::ClusterMismatch(_) => "cluster_mismatch",
            ApiError::Internal(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Rejected(r) => match r.code() {
                c if c.starts_with("unknown_") => StatusCode::NOT_FOUND,
                "invalid_argument" => StatusCode::BAD_REQUEST,
                _ => StatusCode::CONFLICT,
            },
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotLeader { .. } | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) | ApiError::StaleReport(_) | ApiError::ClusterMismatch(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let leader = match &self {
            ApiError::NotLeader { leader } => leader.clone(),
            _ => None,
        };
        let body = ErrorBody { code: self.code().to_string(), message: self.to_string(), leader: leader.clone() };
        let mut resp = (self.status(), Json(body)).into_response();
        if let Some(l) = leader {
            resp.extensions_mut().insert(LeaderHint(l));
        }
        resp
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotLeader { leader } => ApiError::NotLeader { leader },
            NodeError::Unavailable(m) => ApiError::Unavailable(m),
            NodeError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Stale(m) => ApiError::StaleReport(m),
            ReportError::Invalid(m) => ApiError::BadRequest(m),
        }
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        ApiError::BadRequest(e.0)
    }
}

/// A membership change: `conflict` while an earlier change is still being committed.
impl From<RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>> for ApiError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> Self {
        match &e {
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => ApiError::Conflict(c.to_string()),
            _ => NodeError::from(crate::proposer::ProposeError::from(e)).into(),
        }
    }
}

impl From<RaftError<NodeId, InitializeError<NodeId, NodeInfo>>> for ApiError {
    fn from(e: RaftError<NodeId, InitializeError<NodeId, NodeInfo>>) -> Self {
        match &e {
            RaftError::APIError(InitializeError::NotAllowed(n)) => {
                ApiError::Conflict(format!("cluster is already initialized: {n}"))
            }
            RaftError::APIError(InitializeError::NotInMembers(n)) => ApiError::BadRequest(n.to_string()),
            RaftError::Fatal(f) => ApiError::Unavailable(format!("raft stopped: {f}")),
        }
    }
}

impl From<switchyard_storage::StoreError> for ApiError {
    fn from(e: switchyard_storage::StoreError) -> Self {
        NodeError::from(e).into()
    }
}
