#include "model/fp8_base.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "model/linear.hpp"
#include "quant/nf4.hpp"

namespace st {

namespace {

// A [rows, cols] view of the shared activation codes with the shared per-tensor scale.
Fp8Tensor act_view(Fp8Shared& s, int64_t rows, int64_t cols) {
  if (rows * cols > s.act_capacity)
    ST_THROW("fp8 base: activations [", rows, ", ", cols, "] exceed the buffer of ", s.act_capacity, " elements");
  Fp8Tensor q;
  q.rows = rows;
  q.cols = cols;
  q.scaling = Fp8Scaling::per_tensor;
  q.codes = s.act_codes.slice(0, rows * cols).view({rows, cols});
  q.scale_inv = s.act_scale_inv;
  q.amax = s.act_amax;
  return q;
}

// The first rows x cols of a shared weight buffer.
Fp8Tensor weight_view(const Fp8Tensor& buf, int64_t rows, int64_t cols) {
  Fp8Tensor q = buf;
  q.rows = rows;
  q.cols = cols;
  q.codes = buf.codes.view({buf.codes.numel()}).slice(0, rows * cols).view({rows, cols});
  return q;
}

const Fp8Base& base_of(const Linear& l, const char* op) {
  if (!l.fp8) ST_THROW(op, ": ", l.name, " has no FP8 base");
  return *l.fp8;
}

void check_fp8_shape(const Linear& l, const std::string& where) {
  if (l.in % 16 != 0 || l.out % 16 != 0)
    ST_THROW_INPUT(where, ": base_precision = fp8: ", l.name, " is [", l.out, ", ", l.in,
                   "] on this rank; FP8 GEMMs need both dimensions to be multiples of 16");
}

}  // namespace

std::shared_ptr<Fp8Base> fp8_allocate_base(const Linear& l, DType dtype, Device device, bool keep_transpose,
                                           const std::string& where) {
  check_fp8_shape(l, where);
  auto b = std::make_shared<Fp8Base>();
  b->dtype = dtype;
  b->w = fp8_allocate(l.out, l.in, Fp8Scaling::per_tensor, device, MemCategory::weights);
  if (keep_transpose) b->wt = fp8_allocate(l.in, l.out, Fp8Scaling::per_tensor, device, MemCategory::weights);
  return b;
}

void fp8_set_base(Fp8Base& b, const Tensor& w) {
  if (b.from_nf4) ST_THROW("fp8_set_base: an NF4 base is quantized before each GEMM, not stored");
  if (w.dtype() != b.dtype) ST_THROW("fp8_set_base: ", w.str(), " is not in the compute dtype ", dtype_name(b.dtype));
  fp8_quantize(w, b.w);
  if (b.wt.codes.defined()) fp8_transpose(b.w, b.wt);
}

int64_t fp8_convert_base(const std::vector<Linear*>& linears, int64_t rows, const std::string& where,
                         bool keep_transpose) {
  std::vector<Linear*> todo;
  int64_t widest = 0, largest = 0, largest_t = 0;  // largest: NF4 layers (W8 and W8^T); largest_t: per_step too
  for (Linear* l : linears) {
    const bool held = l->fp8_stored();  // FP8 since the build (materialize_params)
    if (!l->adapter) {
      // The build chose the layers the adapters were to attach to: one without is a mismatch
      // of the two lists (its base would be in FP8 and nothing would use it in a LoRA run).
      if (held) ST_THROW("fp8_convert_base: ", l->name, " holds an FP8 base but has no adapter");
      continue;
    }
    if (l->grad.defined()) ST_THROW_INPUT(where, ": ", l->name, ": an FP8 base cannot train (base_precision = fp8 is for lora and qlora)");
    check_fp8_shape(*l, where);
    if (held && l->fp8->wt.codes.defined() != keep_transpose)
      ST_THROW("fp8_convert_base: ", l->name, " was built ", keep_transpose ? "without" : "with",
               " W8^T, but fp8_transpose is ", keep_transpose ? "stored" : "per_step");
    todo.push_back(l);
    widest = std::max({widest, l->in, l->out});
    if (l->quantized()) largest = std::max(largest, l->in * l->out);
    if (l->quantized() || !keep_transpose) largest_t = std::max(largest_t, l->in * l->out);
  }
  if (todo.empty()) return 0;
  const Device d = todo.front()->device();
  auto shared = std::make_shared<Fp8Shared>();
  shared->act_capacity = rows * widest;
  shared->act_codes = Tensor::empty({shared->act_capacity}, DType::u8, d, MemCategory::workspace);
  shared->act_scale_inv = Tensor::zeros({1}, DType::f32, d, MemCategory::workspace);
  shared->act_amax = Tensor::zeros({1}, DType::f32, d, MemCategory::workspace);
  if (largest > 0) shared->w_tmp = fp8_allocate(1, largest, Fp8Scaling::per_tensor, d, MemCategory::workspace);
  if (largest_t > 0) shared->wt_tmp = fp8_allocate(1, largest_t, Fp8Scaling::per_tensor, d, MemCategory::workspace);
  for (Linear* l : todo) {
    if (l->fp8_stored()) {  // W8 (and W8^T) filled as the model was loaded
      l->fp8->shared = shared;
      continue;
    }
    std::shared_ptr<Fp8Base> b;
    if (l->quantized()) {
      b = std::make_shared<Fp8Base>();
      b->from_nf4 = true;
      b->dtype = l->dtype();
    } else {
      b = fp8_allocate_base(*l, l->dtype(), d, keep_transpose, where);
      fp8_set_base(*b, l->weight);
      l->weight = Tensor();  // the dense base is gone: W8 (and W8^T) take its 2 bytes per parameter (or 1)
    }
    b->shared = shared;
    l->fp8 = std::move(b);
  }
  return static_cast<int64_t>(todo.size());
}

size_t fp8_stored_bytes(const Linear& l) {
  if (!l.fp8 || l.fp8->from_nf4) return 0;
  return l.fp8->w.nbytes() + (l.fp8->wt.codes.defined() ? l.fp8->wt.nbytes() : 0);
}

void fp8_linear_forward(const Linear& l, const Tensor& x, Tensor& y, double beta, const Tensor* c_in) {
  const Fp8Base& b = base_of(l, "fp8_linear_forward");
  Fp8Shared& s = *b.shared;
  const int64_t M = x.numel() / l.in;
  Fp8Tensor x8 = act_view(s, M, l.in);
  Fp8Tensor w8 = b.w;
  if (b.from_nf4) {  // NF4 -> the dense buffer -> FP8 (per tensor)
    w8 = weight_view(s.w_tmp, l.out, l.in);
    fp8_quantize(l.dense_weight(), w8);
  }
  fp8_quantize(x, x8);
  matmul_fp8(y, x8, w8, beta, c_in);
}

void fp8_linear_backward_input(const Linear& l, const Tensor& dy, Tensor& dx, bool accumulate) {
  const Fp8Base& b = base_of(l, "fp8_linear_backward_input");
  Fp8Shared& s = *b.shared;
  const int64_t M = dy.numel() / l.out;
  Fp8Tensor wt8 = b.wt;
  if (b.from_nf4) {
    Fp8Tensor w8 = weight_view(s.w_tmp, l.out, l.in);
    fp8_quantize(l.dense_weight(), w8);
    wt8 = weight_view(s.wt_tmp, l.in, l.out);
    fp8_transpose(w8, wt8);
  } else if (!b.wt.codes.defined()) {  // fp8_transpose = per_step
    wt8 = weight_view(s.wt_tmp, l.in, l.out);
    fp8_transpose(b.w, wt8);
  }
  Fp8Tensor dy8 = act_view(s, M, l.out);
  fp8_quantize(dy, dy8);
  matmul_fp8(dx, dy8, wt8, accumulate ? 1.0 : 0.0);
}

}  // namespace st
