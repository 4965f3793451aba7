//! Tickets: their ids, what each kind holds and when each expires. Pure data and pure functions, no I/O.

pub mod expiry;
pub mod id;
pub mod kinds;

pub use expiry::ExpiryPolicy;
pub use id::{IdGenerator, Origin, TicketId, TicketIdError, TicketKind};
pub use kinds::{
    Attributes, EpochMs, Grant, LoginTicket, MAX_SERVICES_PER_TGT, Pgt, Principal, ServiceTicket, Tgt, TgtChange,
    Ticket,
};
