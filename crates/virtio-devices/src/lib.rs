#![doc = include_str!("../README.md")]

pub mod block;
pub mod console;
pub mod net;
pub mod rng;
pub mod vsock;

pub use block::{Block, BlockConfig};
pub use console::Console;
pub use net::{Net, NetConfig};
pub use rng::{Rng, RngConfig};
pub use vsock::{Vsock, VsockConfig};
