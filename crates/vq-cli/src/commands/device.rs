//! `vq-cli device`: what LibTorch can compute on here, and whether each device gives the CPU's
//! answers. The first command the GPU check (scripts/gpu-check.sh) runs: a binary linked without
//! `libtorch_cuda` sees no GPU even on a GPU machine, and this says so before anything else runs.

use std::fmt;

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};
use vq_model::cuda::CudaDeviceInfo;
use vq_model::{Checkpoint, ComputeKind, VqVae};

/// Images the check runs through the model: a fixed smooth pattern with detail, no data needed.
const CHECK_IMAGES: i64 = 16;

#[derive(Debug, Serialize)]
pub struct DeviceReport {
    /// LibTorch sees a CUDA device (false on a GPU machine means `libtorch_cuda` was not linked
    /// or the driver is missing).
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_devices: Vec<CudaDevice>,
    pub cpu_threads: i32,
    /// The bundled model on every device and number type against the CPU in f32.
    pub checks: Vec<DeviceCheck>,
}

#[derive(Debug, Serialize)]
pub struct CudaDevice {
    pub ordinal: usize,
    /// From the CUDA driver; `None` if the driver would not say.
    pub driver: Option<CudaDeviceInfo>,
    /// The number type `--compute auto` picks on it.
    pub auto_compute: String,
}

#[derive(Debug, Serialize)]
pub struct DeviceCheck {
    pub device: String,
    pub compute: String,
    /// Fraction of code indices equal to the CPU f32 pass's.
    pub codes_agree: f64,
    /// Largest difference of a reconstructed pixel from the CPU f32 pass's, in [0, 1] units.
    pub max_pixel_difference: f64,
    /// Reconstruction MSE against the inputs, which should match the CPU's closely.
    pub reconstruction_mse: f64,
}

/// Inventories the devices and runs the bundled model on each.
pub fn run() -> Result<DeviceReport> {
    let count = tch::Cuda::device_count().max(0) as usize;
    let cuda_devices = (0..count)
        .map(|ordinal| CudaDevice {
            ordinal,
            driver: vq_model::cuda::device_info(ordinal),
            auto_compute: format!("{:?}", ComputeKind::Auto.kind(Device::Cuda(ordinal))),
        })
        .collect();
    let reference = Checkpoint::bundled(Device::Cpu).context("opening the bundled model")?;
    let images = check_images();
    let (cpu_codes, cpu_out, _) = run_on(&reference, ComputeKind::F32, Device::Cpu, &images)?;
    let mut checks = Vec::new();
    let devices = std::iter::once(Device::Cpu)
        .chain((0..count).map(Device::Cuda))
        .collect::<Vec<_>>();
    for device in devices {
        for compute in [ComputeKind::F32, ComputeKind::Bf16] {
            let (codes, out, mse) =
                run_on(&reference, compute, device, &images).with_context(|| {
                    format!("running the bundled model on {device:?} in {compute:?}")
                })?;
            let agree = codes
                .eq_tensor(&cpu_codes)
                .to_kind(Kind::Double)
                .mean(Kind::Double);
            let diff = (&out - &cpu_out).abs().max();
            checks.push(DeviceCheck {
                device: format!("{device:?}"),
                compute: format!("{compute:?}").to_lowercase(),
                codes_agree: agree.double_value(&[]),
                max_pixel_difference: diff.double_value(&[]),
                reconstruction_mse: mse,
            });
        }
    }
    Ok(DeviceReport {
        cuda_available: tch::Cuda::is_available(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cuda_devices,
        cpu_threads: tch::get_num_threads(),
        checks,
    })
}

/// `(N, 3, 32, 32)` images in `[0, 1]`: slow colour waves over blocks of several sizes.
fn check_images() -> Tensor {
    let n = CHECK_IMAGES;
    let i = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([n, 1, 1, 1]);
    let c = Tensor::arange(3, (Kind::Float, Device::Cpu)).view([1, 3, 1, 1]);
    let y = Tensor::arange(32, (Kind::Float, Device::Cpu)).view([1, 1, 32, 1]);
    let x = Tensor::arange(32, (Kind::Float, Device::Cpu)).view([1, 1, 1, 32]);
    let waves = ((&x * (&i * 0.01 + 0.05) + &y * (&c * 0.05 + 0.05)).sin() + 1.0) * 0.3;
    let blocks =
        ((&x / 8.0).floor() + (&y / (i.remainder(3.0) * 4.0 + 8.0)).floor()).remainder(2.0);
    (waves + blocks * 0.3 + 0.05).clamp(0.0, 1.0)
}

/// Codes (on the CPU), reconstructions in `[0, 1]` (on the CPU) and the reconstruction MSE.
fn run_on(
    reference: &Checkpoint,
    compute: ComputeKind,
    device: Device,
    images: &Tensor,
) -> Result<(Tensor, Tensor, f64)> {
    let _guard = tch::no_grad_guard();
    let mut config = reference.config.clone();
    config.compute = compute;
    let mut vs = nn::VarStore::new(device);
    let model = VqVae::new(vs.root(), &config);
    vs.copy(&reference.vs)?;
    let range = config.input_range;
    let xs = range_from_unit(images, range).to_device(device);
    let out = model.forward(&xs);
    let recon = range_to_unit(&out.reconstruction.to_device(Device::Cpu), range).clamp(0.0, 1.0);
    let mse = (&recon - images)
        .square()
        .mean(Kind::Double)
        .double_value(&[]);
    Ok((out.codes().to_device(Device::Cpu), recon, mse))
}

fn range_from_unit(unit: &Tensor, range: vq_data::PixelRange) -> Tensor {
    let (lo, hi) = (range.from_byte(0) as f64, range.from_byte(255) as f64);
    unit * (hi - lo) + lo
}

fn range_to_unit(t: &Tensor, range: vq_data::PixelRange) -> Tensor {
    let (lo, hi) = (range.from_byte(0) as f64, range.from_byte(255) as f64);
    (t - lo) / (hi - lo)
}

impl fmt::Display for DeviceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "CUDA available: {}   cuDNN: {}   CPU threads: {}",
            self.cuda_available, self.cudnn_available, self.cpu_threads
        )?;
        for d in &self.cuda_devices {
            match &d.driver {
                Some(info) => writeln!(
                    f,
                    "cuda:{}  {}  compute capability {}.{}  driver CUDA {}.{}  auto compute: {}",
                    d.ordinal,
                    info.name,
                    info.capability.0,
                    info.capability.1,
                    info.driver_version / 1000,
                    info.driver_version % 1000 / 10,
                    d.auto_compute
                )?,
                None => writeln!(f, "cuda:{}  (the driver gave no details)", d.ordinal)?,
            }
        }
        write!(
            f,
            "{:<10} {:<8} {:>12} {:>18} {:>12}",
            "device", "compute", "codes agree", "max pixel diff", "MSE"
        )?;
        for c in &self.checks {
            write!(
                f,
                "\n{:<10} {:<8} {:>12.4} {:>18.5} {:>12.6}",
                c.device, c.compute, c.codes_agree, c.max_pixel_difference, c.reconstruction_mse
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_f32_agrees_with_itself_and_bf16_stays_close() {
        let r = run().unwrap();
        assert_eq!(r.cuda_available, !r.cuda_devices.is_empty());
        let cpu_f32 = &r.checks[0];
        assert_eq!(
            (cpu_f32.device.as_str(), cpu_f32.compute.as_str()),
            ("Cpu", "f32")
        );
        assert_eq!(cpu_f32.codes_agree, 1.0);
        assert_eq!(cpu_f32.max_pixel_difference, 0.0);
        // The bundled model reconstructs the smooth check images well...
        assert!(cpu_f32.reconstruction_mse < 0.02, "{cpu_f32:?}");
        // ...and bf16 convolutions change few codes and little else.
        let cpu_bf16 = &r.checks[1];
        assert!(cpu_bf16.codes_agree > 0.8, "{cpu_bf16:?}");
        assert!(cpu_bf16.reconstruction_mse < 1.5 * cpu_f32.reconstruction_mse + 1e-3);
        assert_eq!(r.checks.len(), 2 * (1 + r.cuda_devices.len()));
    }
}
