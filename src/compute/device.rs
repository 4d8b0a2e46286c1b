//! The one device helper the examples share, as candle's examples do: the CPU when asked, the
//! first CUDA GPU when the crate is built with `--features cuda` and one is present, else the CPU
//! with a note saying why.

use candle_core::Device;

use crate::error::Result;

/// The device to run on. `cpu` forces the CPU.
pub fn pick_device(cpu: bool) -> Result<Device> {
    if cpu {
        return Ok(Device::Cpu);
    }
    if candle_core::utils::cuda_is_available() {
        return Ok(Device::new_cuda(0)?);
    }
    if cfg!(feature = "cuda") {
        eprintln!("note: built with `cuda` but no CUDA GPU was found; running on the CPU");
    }
    Ok(Device::Cpu)
}
