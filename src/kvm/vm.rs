//! The VM: /dev/kvm, guest RAM, the vCPUs, the architecture's in-kernel devices
//! (`arch::setup_vm`, `arch::setup_vcpus`) and interrupt lines.
use std::io;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{self, ArchError, Machine};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: permission denied (run as root, or add your user to the 'kvm' group: sudo usermod -aG kvm $USER, then log in again)")]
    KvmPermission,
    #[error("cannot open /dev/kvm: it does not exist (load the kvm module and check that virtualization is enabled)")]
    KvmMissing,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("guest memory of {requested} bytes is more than the host's {host} bytes of RAM")]
    MemoryTooLarge { requested: u64, host: u64 },
    #[error("guest memory size must be at least 1 MiB and a multiple of 4 KiB, not {0} bytes")]
    MemorySize(u64),
    #[error("cannot map guest memory: {0}")]
    Memory(String),
    #[error("KVM {op} failed: {err}")]
    Kvm {
        op: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Arch(#[from] ArchError),
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |err| VmError::Kvm { op, err }
}

/// Host RAM in bytes.
pub fn host_ram_bytes() -> u64 {
    // SAFETY: sysinfo only writes the struct we pass, which is fully owned here.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the return value is checked.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit))
}

/// Checks a guest memory size before anything is allocated.
pub fn check_memory_size(size: u64) -> Result<(), VmError> {
    if size < (1 << 20) || !size.is_multiple_of(4096) {
        return Err(VmError::MemorySize(size));
    }
    let host = host_ram_bytes();
    if size > host {
        return Err(VmError::MemoryTooLarge {
            requested: size,
            host,
        });
    }
    Ok(())
}

/// Opens /dev/kvm with an error that says how to fix it.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        libc::ENOENT | libc::ENODEV => VmError::KvmMissing,
        _ => VmError::KvmOpen(e),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmError::ApiVersion(version));
    }
    Ok(kvm)
}

/// A KVM VM with its RAM.
pub struct Vm {
    kvm: Kvm,
    /// Shared with the devices that program KVM (GSI routes, irqfds, ioeventfds).
    fd: Arc<VmFd>,
    memory: GuestMemoryMmap,
    mem_size: u64,
    /// What `create_vcpus` set up, once it has run.
    machine: Option<Machine>,
}

impl Vm {
    /// Creates the VM with `mem_size` bytes of RAM where the architecture puts it
    /// (`arch::ram_regions`), then the architecture's in-kernel devices that come before the
    /// vCPUs (`arch::setup_vm`; on x86_64 the irqchip and PIT).
    pub fn new(mem_size: u64) -> Result<Vm, VmError> {
        Self::with_legacy(mem_size, true)
    }

    /// [`Vm::new`], without the legacy devices when `legacy` is false (x86_64: no PIT).
    pub fn with_legacy(mem_size: u64, legacy: bool) -> Result<Vm, VmError> {
        check_memory_size(mem_size)?;
        let kvm = open_kvm()?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let memory = super::ram::guest_memory(&arch::ram_regions(mem_size))?;
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| VmError::Memory(e.to_string()))?;
            let mr = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping behind `host` belongs to `memory`, which this VM owns. Other
            // holders of the shared VM fd only program interrupts and ioeventfds; the guest can
            // touch RAM only from a vCPU, and every vCPU is joined before the Vm is dropped.
            unsafe { fd.set_user_memory_region(mr) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        arch::setup_vm(&fd, legacy)?;
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            memory,
            mem_size,
            machine: None,
        })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The VM fd for devices that program KVM from their own threads.
    pub fn shared_fd(&self) -> Arc<VmFd> {
        self.fd.clone()
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))
    }

    /// Creates vCPUs 0..n, then what needs all of them (`arch::setup_vcpus`; on aarch64 the
    /// vCPU init, the GIC with its ITS and the PMU). Call once, before devices that raise
    /// interrupts: on aarch64 irqfds need the GIC.
    pub fn create_vcpus(&mut self, n: u8) -> Result<(Vec<VcpuFd>, Machine), VmError> {
        let vcpus = (0..n)
            .map(|id| self.create_vcpu(id))
            .collect::<Result<Vec<_>, _>>()?;
        let machine = arch::setup_vcpus(&self.kvm, &self.fd, &vcpus)?;
        self.machine = Some(machine.clone());
        Ok((vcpus, machine))
    }

    /// What `create_vcpus` set up (the boot tables describe it).
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    /// An eventfd that raises legacy IRQ `gsi` inside KVM when written (irqfd).
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Kvm {
            op: "eventfd",
            err: io_to_kvm(e),
        })?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(kvm_err("KVM_IRQFD"))?;
        Ok(evt)
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mem_size", &self.mem_size)
            .finish()
    }
}

/// Converts an `io::Error` into the errno form KVM errors use.
pub fn io_to_kvm(e: io::Error) -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO))
}
