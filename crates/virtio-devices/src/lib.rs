#![doc = include_str!("../README.md")]

pub mod block;

pub use block::{Block, BlockConfig};
