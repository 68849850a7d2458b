//! Pure connection tracking: decode kernel events, rebuild each connection's lifecycle, and flag
//! the connections that get stuck: too long in a state, with data that does not move, behind a
//! full accept queue.
//!
//! Nothing here knows about aya, terminals or JSON, and nothing reads a clock: every time comes in
//! as a [`Timestamp`], so the whole module is tested with event sequences and made-up times.

pub mod activity;
pub mod address;
pub mod code_path;
pub mod diagnosis;
pub mod event;
pub mod lifecycle;
#[cfg(test)]
mod properties;
pub mod protocol;
pub mod stuck;
pub mod summary;
pub mod table;
pub mod time;
pub mod tracker;
pub mod triage;
pub mod view;

pub use activity::{Activity, ExistingSocket, Queues};
pub use code_path::{
    CodePath, CodePathSource, Frame, FrameKind, NoCodePaths, Origin, SHOWN_FRAMES, ShownStack,
    StackRef,
};
pub use diagnosis::Diagnosis;
pub use event::{DecodeError, Endpoints, Family, Transition};
pub use lifecycle::{
    ClosedFirst, Connection, ConnectionKey, Ending, History, OpenedBy, Owner, StateVisit,
};
pub use stuck::Thresholds;
pub use summary::{
    ClosedCounts, CodePathGroup, EndpointGroup, MidIncident, OpenConnection, Stay, Summary,
};
pub use time::Timestamp;
pub use tracker::{Holders, StateChange, StuckAlert, Tracker};
pub use view::{ConnectionView, Losses};
