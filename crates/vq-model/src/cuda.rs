//! What LibTorch's C API (and so tch) does not say about a CUDA device: its name and compute
//! capability, asked of the CUDA driver (`libcuda.so.1`) directly. `ComputeKind::Auto` needs the
//! capability (bf16 tensor cores from 8.0, Ampere), and `vq-cli device` prints both.

/// A CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for an H100 or H200.
    pub capability: (i32, i32),
    /// The driver's CUDA version, e.g. 13000 for 13.0.
    pub driver_version: i32,
}

impl CudaDeviceInfo {
    /// bf16 products run on tensor cores from compute capability 8.0 (Ampere) on; below, LibTorch
    /// emulates them and f32 is the faster choice. The same rule as `torch.cuda.is_bf16_supported`.
    pub fn native_bf16(&self) -> bool {
        self.capability.0 >= 8
    }
}

/// The driver's description of CUDA device `ordinal`; `None` where there is no driver or no
/// such device. Cached per ordinal: the driver is asked once per process.
pub fn device_info(ordinal: usize) -> Option<CudaDeviceInfo> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<usize, Option<CudaDeviceInfo>>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry(ordinal)
        .or_insert_with(|| driver::query(ordinal))
        .clone()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod driver {
    use super::CudaDeviceInfo;
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

    type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
    type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type CuDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;

    // cuda.h's CUdevice_attribute values; stable since CUDA 2.
    const COMPUTE_CAPABILITY_MAJOR: c_int = 75;
    const COMPUTE_CAPABILITY_MINOR: c_int = 76;
    const SUCCESS: c_int = 0;

    fn symbol(lib: *mut c_void, name: &CStr) -> Option<*mut c_void> {
        // SAFETY: `lib` is a live handle from dlopen and `name` a NUL-terminated string.
        let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    pub(super) fn query(ordinal: usize) -> Option<CudaDeviceInfo> {
        let ordinal_c = c_int::try_from(ordinal).ok()?;
        // SAFETY: dlopen with a constant NUL-terminated name; the handle is never closed, since
        // LibTorch keeps the same library loaded for the life of the process anyway.
        let lib = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY) };
        if lib.is_null() {
            return None;
        }
        // SAFETY: each symbol is transmuted to the signature cuda.h declares for it (all are
        // `CUresult f(...)` with C int-sized arguments); every out-pointer points at a live local
        // of the declared type, and the name buffer's length is passed with it.
        unsafe {
            let init: CuInit = std::mem::transmute(symbol(lib, c"cuInit")?);
            let get: CuDeviceGet = std::mem::transmute(symbol(lib, c"cuDeviceGet")?);
            let attribute: CuDeviceGetAttribute =
                std::mem::transmute(symbol(lib, c"cuDeviceGetAttribute")?);
            let get_name: CuDeviceGetName = std::mem::transmute(symbol(lib, c"cuDeviceGetName")?);
            let driver_version: CuDriverGetVersion =
                std::mem::transmute(symbol(lib, c"cuDriverGetVersion")?);
            if init(0) != SUCCESS {
                return None;
            }
            let mut device: c_int = 0;
            if get(&mut device, ordinal_c) != SUCCESS {
                return None;
            }
            let (mut major, mut minor, mut version) = (0, 0, 0);
            if attribute(&mut major, COMPUTE_CAPABILITY_MAJOR, device) != SUCCESS
                || attribute(&mut minor, COMPUTE_CAPABILITY_MINOR, device) != SUCCESS
                || driver_version(&mut version) != SUCCESS
            {
                return None;
            }
            let mut name = [0 as c_char; 256];
            let name = if get_name(name.as_mut_ptr(), name.len() as c_int, device) == SUCCESS {
                CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned()
            } else {
                String::from("unknown")
            };
            Some(CudaDeviceInfo {
                ordinal,
                name,
                capability: (major, minor),
                driver_version: version,
            })
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod driver {
    pub(super) fn query(_ordinal: usize) -> Option<super::CudaDeviceInfo> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_answers_only_when_libtorch_sees_a_gpu() {
        // Without a driver (the CI machine) every ordinal is None; with one, device 0 exists
        // exactly when LibTorch counts a device, and has a real capability.
        let info = device_info(0);
        assert_eq!(info.is_some(), tch::Cuda::device_count() > 0, "{info:?}");
        if let Some(info) = info {
            assert!(info.capability.0 >= 3, "{info:?}");
            assert!(!info.name.is_empty());
        }
        assert_eq!(device_info(usize::MAX), None);
    }

    #[test]
    fn bf16_from_ampere_on() {
        let at = |major| CudaDeviceInfo {
            ordinal: 0,
            name: "x".into(),
            capability: (major, 0),
            driver_version: 13000,
        };
        assert!(!at(7).native_bf16());
        assert!(at(8).native_bf16());
        assert!(at(9).native_bf16());
    }
}
