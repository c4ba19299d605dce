#include "tests/gpu/gpu_util.hpp"

#include <cmath>
#include <cstdlib>

#include "core/allocator.hpp"
#include "core/error.hpp"

namespace st::test {

namespace {
// Under a launcher (mpirun, srun: the NCCL tests on several GPUs) each rank takes its own GPU,
// as the trainer does: the local rank modulo the visible devices. Alone: device 0.
int launcher_local_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return 0;
}
}  // namespace

bool gpu_available() {
  static const bool ok = [] {
    try {
      select_cuda_device(launcher_local_rank());
      Tensor probe = Tensor::zeros({16}, DType::f32, Device::cuda);
      return true;
    } catch (const Error& e) {
      std::printf("[gpu] %s\n", e.what());
      return false;
    }
  }();
  return ok;
}

Tensor random_bf16_values(const Shape& shape, Rng& rng, double scale) {
  Tensor t = Tensor::empty(shape, DType::f64);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.ptr<double>()[i] = bf16_to_f32(f32_to_bf16(static_cast<float>(rng.uniform(-scale, scale))));
  return t;
}

Tensor to_device(const Tensor& cpu, DType dt) {
  Tensor host = cpu.to_cpu(dt);
  Tensor d = Tensor::empty(cpu.shape(), dt, Device::cuda);
  d.copy_from(host);
  return d;
}

double rel_l2(const Tensor& a, const Tensor& ref) {
  const Tensor x = a.to_cpu(DType::f64), y = ref.to_cpu(DType::f64);
  if (x.numel() != y.numel()) return INFINITY;
  double num = 0, den = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double d = x.ptr<double>()[i] - y.ptr<double>()[i];
    if (std::isnan(d)) return INFINITY;
    num += d * d;
    den += y.ptr<double>()[i] * y.ptr<double>()[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

void make_linear_pair(const Tensor& w, Linear& gpu, Linear& cpu) {
  for (Linear* l : {&gpu, &cpu}) {
    l->name = "model.layers.0.mlp.up_proj";
    l->out = w.dim(0);
    l->in = w.dim(1);
  }
  gpu.weight = to_device(w, DType::bf16);
  cpu.weight = w.to_cpu(DType::f64);
}

}  // namespace st::test
