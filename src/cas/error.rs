//! The CAS error codes (CAS 3.0 §2.5.3, §2.7.3) and the one place that turns a refusal into a code.

use crate::registry::RegistryError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasCode {
    InvalidRequest,
    InvalidTicketSpec,
    UnauthorizedServiceProxy,
    UnauthorizedService,
    InvalidProxyCallback,
    InvalidTicket,
    InvalidService,
    InternalError,
}

impl CasCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::InvalidTicketSpec => "INVALID_TICKET_SPEC",
            Self::UnauthorizedServiceProxy => "UNAUTHORIZED_SERVICE_PROXY",
            Self::UnauthorizedService => "UNAUTHORIZED_SERVICE",
            Self::InvalidProxyCallback => "INVALID_PROXY_CALLBACK",
            Self::InvalidTicket => "INVALID_TICKET",
            Self::InvalidService => "INVALID_SERVICE",
            Self::InternalError => "INTERNAL_ERROR",
        }
    }
}

/// A protocol refusal: always sent with HTTP 200 and a non-empty description (the Java client treats a blank
/// description as success).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasFailure {
    pub code: CasCode,
    pub description: String,
}

impl CasFailure {
    pub fn new(code: CasCode, description: impl Into<String>) -> Self {
        Self { code, description: description.into() }
    }

    /// Maps a registry refusal about `ticket` to its CAS code. Outages become `INTERNAL_ERROR` with a generic text;
    /// the detail goes to the log only.
    pub fn from_registry(error: &RegistryError, ticket: &str) -> Self {
        let shown = printable(ticket);
        match error {
            RegistryError::NotFound => Self::new(CasCode::InvalidTicket, format!("Ticket '{shown}' not recognized")),
            RegistryError::Expired => Self::new(CasCode::InvalidTicket, format!("Ticket '{shown}' has expired")),
            RegistryError::SessionEnded => Self::new(
                CasCode::InvalidTicket,
                format!("Ticket '{shown}' belongs to a single sign-on session that has ended"),
            ),
            RegistryError::WrongKind => Self::new(
                CasCode::InvalidTicketSpec,
                format!("Ticket '{shown}' is not of a kind this endpoint accepts"),
            ),
            RegistryError::Map(crate::registry::MapError::OwnerUnreachable) => Self::new(
                CasCode::InvalidTicket,
                format!("Ticket '{shown}' could not be verified: the node that issued it is unavailable"),
            ),
            RegistryError::Map(e) => {
                tracing::warn!(error = %e, "ticket registry unavailable");
                Self::new(CasCode::InternalError, "The ticket registry is unavailable; please retry")
            }
        }
    }
}

/// A ticket as echoed back in a failure text: the id the client sent is no secret to that client, but it is cut to
/// a sane length so a huge parameter is not reflected back.
fn printable(ticket: &str) -> String {
    ticket.chars().take(64).collect()
}
