//! Kicking a vCPU out of `KVM_RUN` from another thread, without races.
//!
//! The thread running a vCPU binds it with [`Vcpu::bind_kick`](crate::Vcpu::bind_kick). A signal handler
//! on that thread then calls [`kick_current_thread`], which sets `kvm_run.immediate_exit`: if the signal
//! came while the thread was in `KVM_RUN`, the ioctl returns EINTR anyway; if it came just before,
//! `immediate_exit` makes the next `KVM_RUN` return at once instead of running the guest. Either way the
//! thread gets back to its loop and sees why it was kicked.

use std::cell::Cell;
use std::marker::PhantomData;

thread_local! {
    /// `&kvm_run.immediate_exit` of the vCPU bound to this thread, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Sets `immediate_exit` of the vCPU bound to the calling thread, if any. Async-signal-safe: meant to be
/// called from the kick signal's handler.
pub fn kick_current_thread() {
    let target = IMMEDIATE_EXIT.with(Cell::get);
    if !target.is_null() {
        // SAFETY: `target` points into the mmap'ed kvm_run page of a vCPU bound to this thread by a
        // live `KickBinding`, which clears the pointer before the vCPU (and its mapping) can go away.
        // A volatile byte store is what KVM reads on the next KVM_RUN.
        unsafe { target.write_volatile(1) };
    }
}

/// Keeps a vCPU bound to the current thread for kicks; unbinds on drop. Not `Send`: it belongs to the
/// thread that made it.
#[derive(Debug)]
pub struct KickBinding {
    _not_send: PhantomData<*mut u8>,
}

impl KickBinding {
    pub(crate) fn bind(immediate_exit: *mut u8) -> Self {
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        Self {
            _not_send: PhantomData,
        }
    }
}

impl Drop for KickBinding {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}
