//! ioeventfds: a guest write to an address signals an eventfd inside KVM, with no exit to
//! userspace. Used for virtio queue notify addresses.
//!
//! Registrations have no datamatch and no length (KVM matches a write of any width at the
//! address): a datamatch ioeventfd fires only for an access of its own width, and notify writes
//! are 16-bit while other drivers may write 32 bits. Devices see only [`IoEventRegistry`]; unit
//! tests use [`FakeIoEvents`].
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum IoEventError {
    #[error("KVM_IOEVENTFD at {addr:#x} failed: {err}")]
    Register { addr: u64, err: kvm_ioctls::Error },
    #[error("KVM_IOEVENTFD (deassign) at {addr:#x} failed: {err}")]
    Unregister { addr: u64, err: kvm_ioctls::Error },
}

/// Binds eventfds to MMIO addresses.
pub trait IoEventRegistry: Send + Sync {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), IoEventError>;
    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<(), IoEventError>;
}

/// MMIO ioeventfds on a real KVM VM.
pub struct KvmIoEvents {
    vm: Arc<VmFd>,
}

impl KvmIoEvents {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmIoEvents { vm }
    }
}

impl IoEventRegistry for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), IoEventError> {
        self.vm
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|err| IoEventError::Register { addr, err })
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<(), IoEventError> {
        self.vm
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|err| IoEventError::Unregister { addr, err })
    }
}

/// Records registrations, refusing a second one at the same address as KVM does.
#[derive(Default)]
pub struct FakeIoEvents {
    /// (raw fd, address) registered now.
    pub registered: Mutex<Vec<(i32, u64)>>,
}

impl FakeIoEvents {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeIoEvents::default())
    }

    pub fn addresses(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|&(_, a)| a)
            .collect();
        v.sort_unstable();
        v
    }
}

impl IoEventRegistry for FakeIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), IoEventError> {
        let mut r = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if r.iter().any(|&(_, a)| a == addr) {
            return Err(IoEventError::Register {
                addr,
                err: kvm_ioctls::Error::new(libc::EEXIST),
            });
        }
        r.push((fd.as_raw_fd(), addr));
        Ok(())
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<(), IoEventError> {
        let mut r = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        let before = r.len();
        r.retain(|&p| p != (fd.as_raw_fd(), addr));
        if r.len() == before {
            return Err(IoEventError::Unregister {
                addr,
                err: kvm_ioctls::Error::new(libc::ENOENT),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the real /dev/kvm: MMIO ioeventfds with no datamatch register, refuse a duplicate,
    /// and unregister; the fake behaves the same.
    #[test]
    fn kvm_and_fake_ioeventfds_agree() {
        let fake = FakeIoEvents::new();
        let regs: Vec<Arc<dyn IoEventRegistry>> = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => {
                let vm = Arc::new(kvm.create_vm().unwrap());
                vec![fake.clone(), Arc::new(KvmIoEvents::new(vm))]
            }
            Err(_) => {
                eprintln!("no /dev/kvm: only the fake");
                vec![fake.clone()]
            }
        };
        for r in regs {
            let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            r.register(&a, 0xc000_3000).unwrap();
            r.register(&b, 0xc000_3004).unwrap();
            assert!(r.register(&b, 0xc000_3000).is_err(), "same address twice");
            r.unregister(&a, 0xc000_3000).unwrap();
            assert!(r.unregister(&a, 0xc000_3000).is_err());
            r.register(&b, 0xc000_3000).unwrap();
            r.unregister(&b, 0xc000_3000).unwrap();
            r.unregister(&b, 0xc000_3004).unwrap();
        }
        assert!(fake.addresses().is_empty());
    }
}
