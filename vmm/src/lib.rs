#![doc = include_str!("../README.md")]
//!
//! The sequence is config -> memory -> machine -> devices -> vCPU threads:
//! [`vm::Vm::new`] builds KVM's VM, guest RAM and, through the [`devices::DeviceManager`], the legacy
//! and virtio devices; [`vm::Vm::load_linux`] loads a kernel and sets up the vCPUs; [`run::run`]
//! starts one thread per vCPU and runs the event loop ([`events`]) until the VM ends.
//! [`cli`] and [`config`] turn the command line into that sequence's inputs.

pub mod api;
pub mod app;
pub mod assist_hook;
pub mod cli;
pub mod config;
pub mod console;
pub mod console_buffer;
pub mod controller;
pub mod devices;
pub mod events;
pub mod landlock;
pub mod launch;
pub mod logger;
pub mod metrics;
pub mod outcome;
pub mod run;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod software_kvm;
pub mod terminal;
pub mod timeline;
pub mod vcpu;
pub mod vm;

pub use outcome::Outcome;
