//! Kicking a vCPU out of `KVM_RUN` from another thread, without races.
//!
//! The thread running a vCPU binds it with [`Vcpu::bind_kick`](crate::Vcpu::bind_kick), which
//! borrows the vCPU for as long as the binding lives and hands it back through the binding. A
//! signal handler on that thread then calls [`kick_current_thread`], which sets
//! `kvm_run.immediate_exit`: if the signal came while the thread was in `KVM_RUN`, the ioctl returns
//! EINTR anyway; if it came just before, `immediate_exit` makes the next `KVM_RUN` return at once
//! instead of running the guest. Either way the thread gets back to its loop and sees why it was
//! kicked.
//!
//! No safe code can make the handler write to an unmapped `kvm_run` page: the binding borrows the
//! vCPU, so the vCPU outlives it, and a binding that is leaked (`mem::forget`) leaves the vCPU
//! marked as bound, which makes the vCPU keep its `kvm_run` mapping when it is dropped.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use crate::Vcpu;

thread_local! {
    /// `&kvm_run.immediate_exit` of the vCPU bound to this thread, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Sets `immediate_exit` of the vCPU bound to the calling thread, if any. Async-signal-safe: meant to be
/// called from the kick signal's handler.
pub fn kick_current_thread() {
    let target = IMMEDIATE_EXIT.with(Cell::get);
    if !target.is_null() {
        // SAFETY: `target` points into the mmap'ed kvm_run page of a vCPU bound to this thread. The
        // page stays mapped while the pointer is set: a live `KickBinding` borrows the vCPU, clearing
        // the pointer when dropped, and a vCPU whose binding was leaked never unmaps the page (see
        // `Vcpu`'s `Drop`). A volatile byte store is what KVM reads on the next KVM_RUN.
        unsafe { target.write_volatile(1) };
    }
}

/// A vCPU bound to the current thread for kicks, used through this binding (it dereferences to the
/// [`Vcpu`]); unbinds on drop. Not `Send`: it belongs to the thread that made it.
#[derive(Debug)]
pub struct KickBinding<'a> {
    vcpu: &'a mut Vcpu,
    _not_send: PhantomData<*mut u8>,
}

impl<'a> KickBinding<'a> {
    pub(crate) fn bind(vcpu: &'a mut Vcpu, immediate_exit: *mut u8) -> Self {
        vcpu.kick_bound = true;
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        Self {
            vcpu,
            _not_send: PhantomData,
        }
    }
}

impl Deref for KickBinding<'_> {
    type Target = Vcpu;

    fn deref(&self) -> &Vcpu {
        self.vcpu
    }
}

impl DerefMut for KickBinding<'_> {
    fn deref_mut(&mut self) -> &mut Vcpu {
        self.vcpu
    }
}

impl Drop for KickBinding<'_> {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
        self.vcpu.kick_bound = false;
    }
}
