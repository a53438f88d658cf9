//! Test guests (feature `test-utils`): the driver side of the rings, played in process, for tests,
//! benches and the PVP demo. Nothing here is part of a switch a user runs.
//!
//! - [`testguest`]: a guest's memory and the driver side of split and packed virtqueues.
//! - [`loopguest`]: a guest that loops every packet it receives back out.
//! - [`traffic`]: a traffic source and checking sink port (the "NIC" side of a PVP run).

pub mod loopguest;
pub mod testguest;
pub mod traffic;
