// valley-lora: LoRA fine-tuning of a GGUF model on chat examples, built on
// llama.cpp's training API (llama_opt_*), for valley's `finetune` stage.
//
// Recipe (see shared notes, "A LoRA trainer against this tree"):
//   1. write an initial adapter GGUF (lora_a small random, lora_b zero), or take
//      the adapter of the last checkpoint when resuming;
//   2. load it with llama_adapter_lora_init BEFORE creating the context (so the
//      graph's node budget counts the LoRA nodes), attach it to the context;
//   3. llama_opt_init with a filter that freezes every base weight, then
//      ggml_set_param on every lora_a / lora_b;
//   4. one example per window of n_ctx tokens, labels < 0 = not trained on
//      (prompt tokens and padding; needs patch 0001), `batch` windows per
//      optimizer step (needs patch 0002);
//   5. save the adapter with gguf_write_to_file.
//
// Exit codes: 0 ok, 1 failure, 2 bad input (a clear message on stderr).

#include "ggml-backend.h"
#include "ggml-opt.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#include "llama-adapter.h"  // internal: the adapter's ab_map (the a/b tensors to train)

#include "valley-lora-devices.h"
#include "valley-lora-memory.h"

#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sys/resource.h>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using json = nlohmann::ordered_json;

namespace {

// 2: K and V bypass the KV cache in the training graph (exact gradients), all seven targets, lossNorm,
//    packing, sparse cross-entropy
constexpr const char * TRAINER_VERSION = "valley-lora 2";

// the projections a LoRA can target (PEFT's "all-linear" for these decoders), plus the output layer
const std::vector<std::string> LINEAR_TARGETS = { "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down" };

struct input_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] void bad_input(const std::string & msg) {
    throw input_error(msg);
}

// ---------------------------------------------------------------------------
// options

struct options {
    std::string model;
    std::string data;
    std::string out;
    std::string metrics;
    std::string summary;
    std::string checkpoint_dir;
    int         checkpoint_every = 0;
    int         rank             = 8;
    float       alpha            = 16.0f;
    std::vector<std::string> targets = LINEAR_TARGETS;
    uint32_t    seed             = 42;
    float       lr               = 1e-4f;
    float       warmup           = 0.0f;  // ratio of the total steps
    std::string decay            = "linear";  // linear | cosine | constant
    float       weight_decay     = 0.0f;
    int         epochs           = 1;
    int         batch            = 1;     // examples per optimizer step
    int         max_seq_len      = 2048;
    std::string overlong         = "truncate";  // truncate | drop
    bool        masking          = true;
    int         threads          = 0;
    int         ctx              = 0;     // window; 0 = the longest kept example, rounded up to 256
    std::string device           = "auto";  // auto | cpu
    int         max_steps        = 0;     // stop after this many steps (0 = all); for benchmarks
    bool        eval_assistant   = false; // after training, the assistant-only loss over the data
    bool        verbose          = false;
    std::string render_text;              // only render the chats to this text file (for full fine-tuning)
    std::string fingerprint;              // identifies model + data for checkpoints (default: their paths)
    std::string loss_norm        = "token";  // token: mean over the step's trained tokens | example: mean of example means
    bool        packing          = false;    // several examples per window, no attention across them
    std::string labels           = "sparse"; // sparse: token ids | dense: one-hot rows (the upstream form)
    std::string adapter_in;               // start from this adapter (its tensors, rank and alpha)
    std::string grad_out;                 // one forward + backward over the whole data, d loss / d tensor here
    bool        eval_only        = false; // the loss over the whole data, to --summary
    int         gpus             = -1;    // GPUs to split the layers over (-1 = all visible, 0 = CPU)
    bool        estimate_memory  = false; // only print the memory model's estimate (JSON) for these flags
    double      memory_limit_mib = 0;     // refuse (exit 2) a run whose estimate exceeds this (0 = no limit)
    std::string check_backward;           // only run OUT_PROD for this weight type on each device and report
    bool        check_flash_attn = false; // only run flash attention's backward op on each device and report
    std::string flash_attn       = "auto"; // on | off | auto (on where every training device runs both ops)
    std::string checkpointing    = "auto"; // on | off | auto (on when the window may reach CHECKPOINT_FROM tokens)
};

// Activation checkpointing costs one more forward pass per step (about a third more compute) and saves all but
// one layer's activations, which grow with the window. From 4,096 tokens they outweigh the frozen base for every
// shape of the paper (Qwen2.5-7B: ~285 KB per token and layer, 28 layers: 32 GB at 4K against 15 GB of BF16
// weights); below that the extra compute buys too little. auto looks at the longest window the flags allow
// (--ctx, else --max-seq-len), not at the data, so that the memory model and the run agree before loading.
constexpr int64_t CHECKPOINT_FROM = 4096;

bool use_checkpointing(const options & o) {
    const int64_t bound = ((o.ctx > 0 ? o.ctx : o.max_seq_len - 1) + 255) / 256 * 256;
    return o.checkpointing == "on" || (o.checkpointing == "auto" && bound >= CHECKPOINT_FROM);
}

// Flash attention in training graphs: its backward pass (patch 0010, ggml_flash_attn_ext_back) recomputes the
// softmax, so no layer keeps an [L, L, heads] F32 matrix until the backward pass (memory linear in L, not
// quadratic). auto: on for a CPU run; on GPUs when every one of them runs both the forward op (F32, masked) and
// the backward op for the base's head sizes (CUDA: patch 0011), since otherwise the scheduler would send
// attention to the CPU.
bool use_flash_attn(const options & o, bool gpus_take_it) {
    return o.flash_attn == "on" || (o.flash_attn == "auto" && gpus_take_it);
}

// Do these GPUs (none: a CPU run) take flash attention for this base? Where a GPU run is only being planned
// on a machine that does not see the GPUs (--estimate-memory), assume a CUDA build of this tree: its forward
// kernels take equal K/V head sizes of 64, 80, 96, 112, 128 or 256 (fattn.cu), its backward kernel up to 256.
bool gpus_take_flash_attn(const std::vector<ggml_backend_dev_t> & gpus, const std::string & model, bool planned_gpu) {
    if (gpus.empty() && !planned_gpu) {
        return true;
    }
    const valley_attention_dims a = valley_read_attention_dims(model);
    if (gpus.empty()) {
        const int64_t hs = a.head_k;
        return a.head_v == hs && (hs == 64 || hs == 80 || hs == 96 || hs == 112 || hs == 128 || hs == 256);
    }
    for (auto * dev : gpus) {
        if (!valley_flash_attn_supported(dev, a.head_k, a.head_v, a.n_head, a.n_head_kv)) {
            return false;
        }
    }
    return true;
}

void usage() {
    fprintf(stderr,
        "usage: valley-lora --model base.gguf --data train.jsonl --out adapter.gguf [options]\n"
        "  --metrics F            per-step metrics JSONL (step, epoch, loss, lr, tokens, seconds)\n"
        "  --summary F            JSON summary of the run\n"
        "  --checkpoint-dir D     keep checkpoints here; a re-run resumes from the last one\n"
        "  --checkpoint-every K   steps between checkpoints (0 = none)\n"
        "  --rank R --alpha A     LoRA rank and alpha (scale = alpha/rank)\n"
        "  --targets a,b,...      modules (default attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down; also output)\n"
        "  --seed N               adapter init and data order\n"
        "  --lr X --warmup RATIO --decay linear|cosine|constant --weight-decay X\n"
        "  --epochs N --batch N   examples per optimizer step (gradient accumulation)\n"
        "  --max-seq-len N --overlong truncate|drop\n"
        "  --masking on|off       loss on assistant tokens only (on) or on every token (off)\n"
        "  --threads N --ctx N --device auto|cpu --max-steps N --eval-assistant-loss --verbose\n"
        "  --render-text F        only write the chats rendered with the model's template to F\n"
        "  --fingerprint S        names model + data for checkpoints (default: their paths), e.g. content digests\n"
        "  --loss-norm token|example  mean over all trained tokens of a step (token) or of each example's mean\n"
        "  --packing on|off       several examples per window (own positions, no attention across them)\n"
        "  --labels sparse|dense  cross-entropy on token ids (sparse) or on one-hot rows (dense)\n"
        "  --adapter-in F.gguf    start from this adapter instead of a fresh one\n"
        "  --grad-out F.gguf      no training: one forward + backward over all the data, d(loss)/d(tensor) of every\n"
        "                         LoRA tensor (F32, the adapter's names) to F\n"
        "  --eval-only            no training: the loss over all the data (training's normalisation) to --summary\n"
        "  --gpus N               split the layers over the first N GPUs (default: all visible; 0 = the CPU)\n"
        "  --estimate-memory      print the memory model's estimate for these flags (JSON bytes) and exit\n"
        "  --memory-limit MIB     exit 2 before loading if the estimate exceeds MIB (a GPU's memory is checked too)\n"
        "  --check-backward TYPE  run the backward through a TYPE weight (f32|f16|bf16) on each device, print JSON\n"
        "  --check-flash-attn     run flash attention's backward op on each device against a double reference, print JSON\n"
        "  --flash-attn on|off|auto  attention with a recomputing backward pass, memory linear in the window\n"
        "                         (auto, the default: on for a CPU run, and on GPUs that run both of its ops)\n"
        "  --checkpointing on|off|auto  keep each layer's input only, recompute its forward pass in the backward\n"
        "                         pass (auto, the default: on when --ctx or --max-seq-len allows 4,096 tokens)\n");
}

std::vector<std::string> split_csv(const std::string & s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (!item.empty()) {
            out.push_back(item);
        }
    }
    return out;
}

options parse_args(int argc, char ** argv) {
    options o;
    auto need = [&](int & i) -> std::string {
        if (i + 1 >= argc) {
            bad_input(std::string("missing value for ") + argv[i]);
        }
        return argv[++i];
    };
    auto to_int = [](const std::string & flag, const std::string & v) -> int {
        char * end = nullptr;
        const long x = std::strtol(v.c_str(), &end, 10);
        if (v.empty() || *end != '\0') {
            bad_input(flag + " needs an integer, got '" + v + "'");
        }
        return (int) x;
    };
    auto to_float = [](const std::string & flag, const std::string & v) -> float {
        char * end = nullptr;
        const float x = std::strtof(v.c_str(), &end);
        if (v.empty() || *end != '\0' || !std::isfinite(x)) {
            bad_input(flag + " needs a number, got '" + v + "'");
        }
        return x;
    };
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if      (a == "--model")              { o.model = need(i); }
        else if (a == "--data")               { o.data = need(i); }
        else if (a == "--out")                { o.out = need(i); }
        else if (a == "--metrics")            { o.metrics = need(i); }
        else if (a == "--summary")            { o.summary = need(i); }
        else if (a == "--checkpoint-dir")     { o.checkpoint_dir = need(i); }
        else if (a == "--checkpoint-every")   { o.checkpoint_every = to_int(a, need(i)); }
        else if (a == "--rank")               { o.rank = to_int(a, need(i)); }
        else if (a == "--alpha")              { o.alpha = to_float(a, need(i)); }
        else if (a == "--targets")            { o.targets = split_csv(need(i)); }
        else if (a == "--seed")               { o.seed = (uint32_t) to_int(a, need(i)); }
        else if (a == "--lr")                 { o.lr = to_float(a, need(i)); }
        else if (a == "--warmup")             { o.warmup = to_float(a, need(i)); }
        else if (a == "--decay")              { o.decay = need(i); }
        else if (a == "--weight-decay")       { o.weight_decay = to_float(a, need(i)); }
        else if (a == "--epochs")             { o.epochs = to_int(a, need(i)); }
        else if (a == "--batch")              { o.batch = to_int(a, need(i)); }
        else if (a == "--max-seq-len")        { o.max_seq_len = to_int(a, need(i)); }
        else if (a == "--overlong")           { o.overlong = need(i); }
        else if (a == "--masking")            { const std::string v = need(i);
                                                if (v != "on" && v != "off") { bad_input("--masking takes on|off"); }
                                                o.masking = v == "on"; }
        else if (a == "--threads")            { o.threads = to_int(a, need(i)); }
        else if (a == "--ctx")                { o.ctx = to_int(a, need(i)); }
        else if (a == "--device")             { o.device = need(i); }
        else if (a == "--max-steps")          { o.max_steps = to_int(a, need(i)); }
        else if (a == "--eval-assistant-loss") { o.eval_assistant = true; }
        else if (a == "--verbose")            { o.verbose = true; }
        else if (a == "--render-text")        { o.render_text = need(i); }
        else if (a == "--fingerprint")        { o.fingerprint = need(i); }
        else if (a == "--loss-norm")          { o.loss_norm = need(i); }
        else if (a == "--packing")            { const std::string v = need(i);
                                                if (v != "on" && v != "off") { bad_input("--packing takes on|off"); }
                                                o.packing = v == "on"; }
        else if (a == "--labels")             { o.labels = need(i); }
        else if (a == "--adapter-in")         { o.adapter_in = need(i); }
        else if (a == "--grad-out")           { o.grad_out = need(i); }
        else if (a == "--eval-only")          { o.eval_only = true; }
        else if (a == "--gpus")               { o.gpus = to_int(a, need(i)); }
        else if (a == "--estimate-memory")    { o.estimate_memory = true; }
        else if (a == "--memory-limit")       { o.memory_limit_mib = to_float(a, need(i)); }
        else if (a == "--check-backward")     { o.check_backward = need(i); }
        else if (a == "--check-flash-attn")   { o.check_flash_attn = true; }
        else if (a == "--checkpointing")      { o.checkpointing = need(i);
                                                if (o.checkpointing != "on" && o.checkpointing != "off" && o.checkpointing != "auto") {
                                                    bad_input("--checkpointing must be on, off or auto");
                                                } }
        else if (a == "--flash-attn")         { o.flash_attn = need(i);
                                                if (o.flash_attn != "on" && o.flash_attn != "off" && o.flash_attn != "auto") {
                                                    bad_input("--flash-attn must be on, off or auto");
                                                } }
        else if (a == "-h" || a == "--help")  { usage(); std::exit(0); }
        else { usage(); bad_input("unknown argument '" + a + "'"); }
    }
    if (!o.check_backward.empty() || o.check_flash_attn) {
        return o;
    }
    if (o.model.empty() || (!o.estimate_memory && (o.data.empty() || (o.out.empty() && o.render_text.empty() && o.grad_out.empty() && !o.eval_only)))) {
        usage();
        bad_input("--model, --data and --out (or --render-text, --grad-out, --eval-only) are required");
    }
    if (!o.grad_out.empty() && o.eval_only) {
        bad_input("--grad-out and --eval-only exclude each other (--grad-out also reports the loss)");
    }
    if (o.eval_only && o.summary.empty()) {
        bad_input("--eval-only writes the loss to --summary, which is missing");
    }
    if (o.rank <= 0)                      { bad_input("--rank must be > 0 (got " + std::to_string(o.rank) + ")"); }
    if (!(o.alpha > 0.0f))                { bad_input("--alpha must be > 0"); }
    if (!(o.lr > 0.0f))                   { bad_input("--lr must be > 0"); }
    if (o.warmup < 0.0f || o.warmup > 1.0f) { bad_input("--warmup is a ratio in [0, 1]"); }
    if (o.weight_decay < 0.0f || o.weight_decay > 1.0f) { bad_input("--weight-decay must be in [0, 1]"); }
    if (o.epochs < 1)                     { bad_input("--epochs must be >= 1"); }
    if (o.batch < 1)                      { bad_input("--batch must be >= 1"); }
    if (o.max_seq_len < 2)                { bad_input("--max-seq-len must be >= 2"); }
    if (o.checkpoint_every < 0)           { bad_input("--checkpoint-every must be >= 0"); }
    if (o.decay != "linear" && o.decay != "cosine" && o.decay != "constant") {
        bad_input("--decay takes linear|cosine|constant, got '" + o.decay + "'");
    }
    if (o.overlong != "truncate" && o.overlong != "drop") {
        bad_input("--overlong takes truncate|drop, got '" + o.overlong + "'");
    }
    if (o.device != "auto" && o.device != "cpu") {
        bad_input("--device takes auto|cpu, got '" + o.device + "'");
    }
    if (o.targets.empty()) {
        bad_input("--targets is empty");
    }
    for (const auto & t : o.targets) {
        if (t != "output" && std::find(LINEAR_TARGETS.begin(), LINEAR_TARGETS.end(), t) == LINEAR_TARGETS.end()) {
            bad_input("unknown target module '" + t + "'; allowed: attn_q, attn_k, attn_v, attn_output, ffn_gate, "
                      "ffn_up, ffn_down, output");
        }
    }
    if (o.loss_norm != "token" && o.loss_norm != "example") {
        bad_input("--loss-norm takes token|example, got '" + o.loss_norm + "'");
    }
    if (o.labels != "sparse" && o.labels != "dense") {
        bad_input("--labels takes sparse|dense, got '" + o.labels + "'");
    }
    if (o.packing && o.loss_norm == "example") {
        bad_input("--packing on needs --loss-norm token: a window then holds several examples, and the loss of a "
                  "window is the mean over its tokens, so examples cannot be weighed one by one");
    }
    if (o.gpus < -1) {
        bad_input("--gpus must be >= 0");
    }
    if (o.memory_limit_mib < 0) {
        bad_input("--memory-limit must be >= 0");
    }
    return o;
}

// ---------------------------------------------------------------------------
// logging: llama.cpp's own log only with --verbose (errors always)

bool g_verbose = false;

void log_cb(enum ggml_log_level level, const char * text, void * /*ud*/) {
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

void info(const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("valley-lora: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

// ---------------------------------------------------------------------------
// files

void write_file_atomic(const std::string & path, const std::string & content) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) {
            throw std::runtime_error("cannot write " + tmp);
        }
        f << content;
        f.flush();
        if (!f) {
            throw std::runtime_error("cannot write " + tmp);
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        throw std::runtime_error("cannot rename " + tmp + " to " + path);
    }
}

bool file_exists(const std::string & path) {
    std::ifstream f(path);
    return f.good();
}

// ---------------------------------------------------------------------------
// base model checks from the GGUF header (before loading)

struct base_info {
    std::string arch;
    std::map<std::string, std::vector<int64_t>> shapes;  // tensor name -> ne
    std::map<std::string, ggml_type> types;
    int n_layer = 0;
};

base_info read_base_info(const std::string & path) {
    ggml_context * meta = nullptr;
    gguf_init_params p = { /*.no_alloc =*/ true, /*.ctx =*/ &meta };
    gguf_context * g = gguf_init_from_file(path.c_str(), p);
    if (!g) {
        bad_input("cannot read the base model " + path + " as GGUF");
    }
    base_info bi;
    const int64_t kid = gguf_find_key(g, "general.architecture");
    if (kid < 0 || gguf_get_kv_type(g, kid) != GGUF_TYPE_STRING) {
        gguf_free(g);
        ggml_free(meta);
        bad_input("the base model has no general.architecture");
    }
    bi.arch = gguf_get_val_str(g, kid);

    auto get_u32 = [&](const std::string & key) -> int64_t {
        const int64_t id = gguf_find_key(g, key.c_str());
        if (id < 0) {
            return -1;
        }
        switch (gguf_get_kv_type(g, id)) {
            case GGUF_TYPE_UINT32: return gguf_get_val_u32(g, id);
            case GGUF_TYPE_INT32:  return gguf_get_val_i32(g, id);
            case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(g, id);
            default:               return -1;
        }
    };
    const int64_t n_expert = get_u32(bi.arch + ".expert_count");
    bi.n_layer = (int) get_u32(bi.arch + ".block_count");

    for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
        const char * name = gguf_get_tensor_name(g, i);
        const ggml_tensor * t = ggml_get_tensor(meta, name);
        std::vector<int64_t> ne;
        for (int d = 0; d < GGML_MAX_DIMS; ++d) {
            ne.push_back(t->ne[d]);
        }
        bi.shapes[name] = ne;
        bi.types[name] = t->type;
    }
    gguf_free(g);
    ggml_free(meta);

    if (n_expert > 0) {
        bad_input("architecture '" + bi.arch + "' is a mixture of experts (" + std::to_string(n_expert) +
                  " experts): it cannot be trained here, MUL_MAT_ID has no backward pass in this llama.cpp");
    }
    // RMSNorm + SwiGLU + RoPE decoders: every op of their graph has a backward pass.
    static const std::set<std::string> trainable = { "llama", "qwen2", "qwen3", "mistral3" };
    if (trainable.count(bi.arch) == 0) {
        bad_input("architecture '" + bi.arch + "' cannot be trained here: only llama, qwen2, qwen3 and "
                  "mistral3 (RMSNorm + SwiGLU + RoPE) are; other architectures use ops without a backward "
                  "pass in this llama.cpp (NORM, GELU, MUL_MAT_ID, FLASH_ATTN_EXT)");
    }
    return bi;
}

// target module -> the base tensor names it covers
std::vector<std::string> resolve_targets(const options & o, const base_info & bi) {
    std::vector<std::string> names;
    for (const auto & t : o.targets) {
        std::vector<std::string> hits;
        if (t == "output") {
            if (bi.shapes.count("output.weight")) {
                hits.push_back("output.weight");
            }
        } else {
            for (int il = 0; il < bi.n_layer; ++il) {
                const std::string n = "blk." + std::to_string(il) + "." + t + ".weight";
                if (bi.shapes.count(n)) {
                    hits.push_back(n);
                }
            }
        }
        if (hits.empty()) {
            bad_input("target module '" + t + "' does not exist in this " + bi.arch + " model (no tensor blk.N." + t +
                      ".weight)");
        }
        for (const auto & h : hits) {
            if (bi.shapes.at(h)[2] != 1 || bi.shapes.at(h)[3] != 1) {
                bad_input("target tensor " + h + " is not a matrix");
            }
            names.push_back(h);
        }
    }
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return names;
}

// ---------------------------------------------------------------------------
// adapter files

void write_initial_adapter(const std::string & path, const options & o, const base_info & bi,
                           const std::vector<std::string> & targets) {
    size_t n_bytes = 0;
    for (const auto & n : targets) {
        const auto & ne = bi.shapes.at(n);
        n_bytes += (size_t) (ne[0] + ne[1]) * o.rank * sizeof(float) + 2 * ggml_tensor_overhead();
    }
    ggml_init_params ip = { /*.mem_size =*/ n_bytes + 1024, /*.mem_buffer =*/ nullptr, /*.no_alloc =*/ false };
    ggml_context * ctx = ggml_init(ip);
    gguf_context * g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", bi.arch.c_str());
    gguf_set_val_str(g, "general.type", "adapter");
    gguf_set_val_str(g, "adapter.type", "lora");
    gguf_set_val_f32(g, "adapter.lora.alpha", o.alpha);

    std::mt19937 rng(o.seed);
    for (const auto & n : targets) {
        const auto & ne = bi.shapes.at(n);
        // A: [n_in, r], uniform(-1/sqrt(n_in), 1/sqrt(n_in)) like PEFT's kaiming init; B: [r, n_out], zero,
        // so the adapter starts as the identity.
        ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne[0], o.rank);
        ggml_tensor * b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, o.rank, ne[1]);
        ggml_set_name(a, (n + ".lora_a").c_str());
        ggml_set_name(b, (n + ".lora_b").c_str());
        const float bound = 1.0f / std::sqrt((float) ne[0]);
        float * ad = (float *) a->data;
        for (int64_t i = 0; i < ggml_nelements(a); ++i) {
            // from the raw 32-bit draws, so that the values do not depend on the C++ library
            ad[i] = bound * (2.0f * (float) ((double) rng() / 4294967296.0) - 1.0f);
        }
        memset(b->data, 0, ggml_nbytes(b));
        gguf_add_tensor(g, a);
        gguf_add_tensor(g, b);
    }
    const std::string tmp = path + ".tmp";
    if (!gguf_write_to_file(g, tmp.c_str(), false) || std::rename(tmp.c_str(), path.c_str()) != 0) {
        gguf_free(g);
        ggml_free(ctx);
        throw std::runtime_error("cannot write " + path);
    }
    gguf_free(g);
    ggml_free(ctx);
}

void save_adapter(const std::string & path, llama_adapter_lora * adapter, const std::string & arch, float alpha) {
    gguf_context * g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", arch.c_str());
    gguf_set_val_str(g, "general.type", "adapter");
    gguf_set_val_str(g, "adapter.type", "lora");
    gguf_set_val_f32(g, "adapter.lora.alpha", alpha);
    std::vector<std::string> names;
    for (const auto & it : adapter->ab_map) {
        names.push_back(it.first);
    }
    std::sort(names.begin(), names.end());  // a stable file: the map is unordered
    for (const auto & n : names) {
        const auto & w = adapter->ab_map.at(n);
        gguf_add_tensor(g, w.a);  // gguf copies tensors held in device buffers back to the host
        gguf_add_tensor(g, w.b);
    }
    const std::string tmp = path + ".tmp";
    const bool ok = gguf_write_to_file(g, tmp.c_str(), false);
    gguf_free(g);
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        throw std::runtime_error("cannot write " + path);
    }
}

struct adapter_info {
    std::vector<std::string> targets;  // base tensor names
    int   rank  = 0;
    float alpha = 0.0f;
};

// --adapter-in: its LoRA pairs, rank and alpha, checked against the base before anything is loaded
adapter_info read_adapter_info(const std::string & path, const base_info & bi) {
    ggml_context * meta = nullptr;
    gguf_init_params p = { /*.no_alloc =*/ true, /*.ctx =*/ &meta };
    gguf_context * g = gguf_init_from_file(path.c_str(), p);
    if (!g) {
        bad_input("cannot read the adapter " + path + " as GGUF");
    }
    adapter_info ai;
    const int64_t ka = gguf_find_key(g, "adapter.lora.alpha");
    ai.alpha = ka >= 0 && gguf_get_kv_type(g, ka) == GGUF_TYPE_FLOAT32 ? gguf_get_val_f32(g, ka) : 0.0f;
    std::string problem;
    for (int64_t i = 0; i < gguf_get_n_tensors(g) && problem.empty(); ++i) {
        const std::string name = gguf_get_tensor_name(g, i);
        const ggml_tensor * t = ggml_get_tensor(meta, name.c_str());
        const std::string suffix = ".lora_a";
        if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
            continue;
        }
        const std::string base = name.substr(0, name.size() - suffix.size());
        if (!bi.shapes.count(base)) {
            problem = name + " adapts " + base + ", which the base model does not have";
        } else if (t->type != GGML_TYPE_F32) {
            problem = name + " is not F32";
        } else if (ai.rank != 0 && t->ne[1] != ai.rank) {
            problem = "the ranks differ between tensors";
        } else {
            ai.rank = (int) t->ne[1];
            ai.targets.push_back(base);
        }
    }
    gguf_free(g);
    ggml_free(meta);
    if (!problem.empty()) {
        bad_input("the adapter " + path + ": " + problem);
    }
    if (ai.targets.empty() || !(ai.alpha > 0.0f)) {
        bad_input("the adapter " + path + " has no LoRA tensors (*.lora_a / *.lora_b) or no adapter.lora.alpha > 0");
    }
    std::sort(ai.targets.begin(), ai.targets.end());
    return ai;
}

// ---------------------------------------------------------------------------
// data: chat examples -> tokens + per-token "trained" flags

struct example {
    std::string              text;       // the rendered chat
    std::vector<llama_token> tokens;
    std::vector<uint8_t>     assistant;  // 1 where the token is part of an assistant turn
};

std::string message_text(const json & content, size_t line) {
    if (content.is_string()) {
        return content.get<std::string>();
    }
    if (content.is_array()) {  // OpenAI content parts: keep the text ones
        std::string s;
        for (const auto & part : content) {
            if (part.is_object() && part.value("type", "") == "text" && part.contains("text") && part["text"].is_string()) {
                s += part["text"].get<std::string>();
            }
        }
        return s;
    }
    if (content.is_null()) {
        return "";
    }
    bad_input("line " + std::to_string(line) + ": message content must be a string or a list of text parts");
}

std::string render(const char * tmpl, const std::vector<llama_chat_message> & msgs, size_t n, bool add_ass) {
    std::vector<char> buf(4096);
    int32_t r = llama_chat_apply_template(tmpl, msgs.data(), n, add_ass, buf.data(), (int32_t) buf.size());
    if (r > (int32_t) buf.size()) {
        buf.resize((size_t) r);
        r = llama_chat_apply_template(tmpl, msgs.data(), n, add_ass, buf.data(), (int32_t) buf.size());
    }
    if (r < 0) {
        bad_input("the model's chat template is not supported by llama_chat_apply_template");
    }
    return std::string(buf.data(), (size_t) r);
}

std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special) {
    std::vector<llama_token> toks(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), toks.data(), (int32_t) toks.size(), add_special, true);
    if (n < 0) {
        toks.resize((size_t) -n);
        n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), toks.data(), (int32_t) toks.size(), add_special, true);
    }
    if (n < 0) {
        throw std::runtime_error("tokenization failed");
    }
    toks.resize((size_t) n);
    return toks;
}

example build_example(const json & row, size_t line, const char * tmpl, const llama_vocab * vocab) {
    if (!row.is_object() || !row.contains("messages") || !row["messages"].is_array()) {
        bad_input("line " + std::to_string(line) + ": expected an object with a \"messages\" list");
    }
    const json & jm = row["messages"];
    std::vector<std::string> roles, contents;
    for (const auto & m : jm) {
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
            bad_input("line " + std::to_string(line) + ": every message needs a string \"role\"");
        }
        roles.push_back(m["role"].get<std::string>());
        contents.push_back(message_text(m.contains("content") ? m["content"] : json(nullptr), line));
    }
    std::vector<llama_chat_message> msgs;
    for (size_t i = 0; i < roles.size(); ++i) {
        msgs.push_back({ roles[i].c_str(), contents[i].c_str() });
    }
    // assistant spans: render the chat up to turn i with the generation prompt, then up
    // to and including turn i; the difference is what the model must produce.
    const std::string full = render(tmpl, msgs, msgs.size(), false);
    std::vector<std::pair<size_t, size_t>> spans;
    for (size_t i = 0; i < msgs.size(); ++i) {
        if (roles[i] != "assistant") {
            continue;
        }
        const std::string pre  = render(tmpl, msgs, i, true);
        const std::string upto = render(tmpl, msgs, i + 1, false);
        if (upto.compare(0, pre.size(), pre) != 0 || full.compare(0, upto.size(), upto) != 0) {
            bad_input("line " + std::to_string(line) + ": the chat template does not render turn by turn "
                      "(a shorter chat is not a prefix of a longer one), so assistant spans cannot be found");
        }
        if (upto.size() > pre.size()) {
            spans.emplace_back(pre.size(), upto.size());
        }
    }
    if (spans.empty()) {
        bad_input("line " + std::to_string(line) + ": the example has no assistant turn (nothing to train on)");
    }
    example ex;
    ex.text = full;
    size_t pos = 0;
    auto add = [&](size_t from, size_t to, uint8_t flag) {
        if (to <= from) {
            return;
        }
        const bool first = ex.tokens.empty();
        const auto toks = tokenize(vocab, full.substr(from, to - from), first && llama_vocab_get_add_bos(vocab));
        ex.tokens.insert(ex.tokens.end(), toks.begin(), toks.end());
        ex.assistant.insert(ex.assistant.end(), toks.size(), flag);
    };
    for (const auto & s : spans) {
        add(pos, s.first, 0);
        add(s.first, s.second, 1);
        pos = s.second;
    }
    add(pos, full.size(), 0);
    return ex;
}

// ---------------------------------------------------------------------------
// training state shared with the optimizer-parameter callback

struct schedule {
    float lr = 0.0f, wd = 0.0f;
    int64_t total = 1, warm = 0;
    std::string decay;
    int64_t step = 0;  // the step being taken (0-based)
    bool grad_only = false;  // lr ~0 and beta1 0: the step moves nothing and its first moment is the gradient

    // optimizer state to restore from a checkpoint: the moments exist only once the first
    // optimizer step has been built, so it is restored from the callback of that step
    llama_context * lctx = nullptr;
    int64_t pending_iter = 0;
    std::vector<std::pair<ggml_tensor *, std::vector<float>>> pending_m, pending_v;

    float lr_at(int64_t s) const {
        if (s < warm) {
            return lr * (float) (s + 1) / (float) warm;
        }
        const double p = (double) (s - warm) / (double) std::max<int64_t>(1, total - warm);
        if (decay == "linear") {
            return (float) (lr * (1.0 - p));
        }
        if (decay == "cosine") {
            return (float) (lr * 0.5 * (1.0 + std::cos(3.14159265358979323846 * p)));
        }
        return lr;
    }
};

void restore_optimizer(schedule * s) {
    ggml_opt_context_t oc = llama_opt_get_context(s->lctx);
    for (int which = 0; which < 2; ++which) {
        for (auto & pv : which == 0 ? s->pending_m : s->pending_v) {
            ggml_tensor * t = which == 0 ? ggml_opt_adamw_m(oc, pv.first) : ggml_opt_adamw_v(oc, pv.first);
            if (!t || (size_t) ggml_nelements(t) != pv.second.size()) {
                fprintf(stderr, "valley-lora: failed: cannot restore the optimizer state of %s\n", pv.first->name);
                std::exit(1);
            }
            ggml_backend_tensor_set(t, pv.second.data(), 0, pv.second.size() * sizeof(float));
        }
    }
    ggml_opt_set_iter(oc, s->pending_iter);
    s->pending_iter = 0;
    s->pending_m.clear();
    s->pending_v.clear();
}

ggml_opt_optimizer_params opt_pars_cb(void * ud) {
    schedule * s = (schedule *) ud;
    if (s->pending_iter > 0) {
        restore_optimizer(s);
    }
    ggml_opt_optimizer_params p = ggml_opt_get_default_optimizer_params(nullptr);
    p.adamw.alpha = std::max(s->lr_at(s->step), 1e-12f);
    p.adamw.wd    = s->wd;
    if (s->grad_only) {
        // ggml-opt wants a learning rate > 0: 1e-30 moves no F32 weight above 1e-23 (and nothing is saved)
        p.adamw.alpha = 1e-30f;
        p.adamw.wd    = 0.0f;
        p.adamw.beta1 = 0.0f;
    }
    return p;
}

bool freeze_all(const ggml_tensor * /*t*/, void * /*ud*/) {
    return false;
}

// AdamW state: the iteration count and both moments of every adapter tensor
void save_optimizer(const std::string & path, llama_context * lctx, llama_adapter_lora * adapter) {
    ggml_opt_context_t oc = llama_opt_get_context(lctx);
    std::vector<ggml_tensor *> params;
    std::vector<std::string> names;
    for (const auto & it : adapter->ab_map) {
        names.push_back(it.first);
    }
    std::sort(names.begin(), names.end());
    for (const auto & n : names) {
        params.push_back(adapter->ab_map.at(n).a);
        params.push_back(adapter->ab_map.at(n).b);
    }
    size_t bytes = 0;
    for (auto * p : params) {
        bytes += 2 * (ggml_nbytes(p) + ggml_tensor_overhead());
    }
    ggml_init_params ip = { /*.mem_size =*/ bytes + 1024, /*.mem_buffer =*/ nullptr, /*.no_alloc =*/ false };
    ggml_context * ctx = ggml_init(ip);
    gguf_context * g = gguf_init_empty();
    gguf_set_val_u64(g, "valley.opt.iter", (uint64_t) ggml_opt_get_iter(oc));
    for (auto * p : params) {
        for (int which = 0; which < 2; ++which) {
            ggml_tensor * src = which == 0 ? ggml_opt_adamw_m(oc, p) : ggml_opt_adamw_v(oc, p);
            if (!src) {
                gguf_free(g);
                ggml_free(ctx);
                throw std::runtime_error(std::string("no optimizer state for ") + p->name);
            }
            ggml_tensor * t = ggml_dup_tensor(ctx, src);
            ggml_set_name(t, (std::string(p->name) + (which == 0 ? ".m" : ".v")).c_str());
            ggml_backend_tensor_get(src, t->data, 0, ggml_nbytes(t));
            gguf_add_tensor(g, t);
        }
    }
    const std::string tmp = path + ".tmp";
    const bool ok = gguf_write_to_file(g, tmp.c_str(), false);
    gguf_free(g);
    ggml_free(ctx);
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        throw std::runtime_error("cannot write " + path);
    }
}

// --grad-out: d(loss)/d(tensor) of every LoRA tensor, F32, under the adapter's own names; read off
// AdamW's first moment after a step with beta1 = 0 (m = g exactly) and lr ~0
void save_gradients(const std::string & path, llama_context * lctx, llama_adapter_lora * adapter,
                    const std::string & arch, float alpha) {
    ggml_opt_context_t oc = llama_opt_get_context(lctx);
    std::vector<std::string> names;
    for (const auto & it : adapter->ab_map) {
        names.push_back(it.first);
    }
    std::sort(names.begin(), names.end());
    size_t bytes = 0;
    for (const auto & n : names) {
        for (ggml_tensor * p : { adapter->ab_map.at(n).a, adapter->ab_map.at(n).b }) {
            bytes += (size_t) ggml_nelements(p) * sizeof(float) + ggml_tensor_overhead();
        }
    }
    ggml_init_params ip = { /*.mem_size =*/ bytes + 1024, /*.mem_buffer =*/ nullptr, /*.no_alloc =*/ false };
    ggml_context * ctx = ggml_init(ip);
    gguf_context * g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", arch.c_str());
    gguf_set_val_str(g, "general.type", "adapter");
    gguf_set_val_str(g, "adapter.type", "lora");
    gguf_set_val_f32(g, "adapter.lora.alpha", alpha);
    gguf_set_val_str(g, "valley.gradient", "d(loss)/d(tensor)");
    for (const auto & n : names) {
        for (ggml_tensor * p : { adapter->ab_map.at(n).a, adapter->ab_map.at(n).b }) {
            ggml_tensor * m = ggml_opt_adamw_m(oc, p);
            if (!m || m->type != GGML_TYPE_F32) {
                gguf_free(g);
                ggml_free(ctx);
                throw std::runtime_error(std::string("no gradient for ") + p->name);
            }
            ggml_tensor * t = ggml_new_tensor(ctx, GGML_TYPE_F32, GGML_MAX_DIMS, p->ne);
            ggml_set_name(t, p->name);
            ggml_backend_tensor_get(m, t->data, 0, ggml_nbytes(t));
            gguf_add_tensor(g, t);
        }
    }
    const std::string tmp = path + ".tmp";
    const bool ok = gguf_write_to_file(g, tmp.c_str(), false);
    gguf_free(g);
    ggml_free(ctx);
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        throw std::runtime_error("cannot write " + path);
    }
}

void load_optimizer(const std::string & path, llama_adapter_lora * adapter, schedule & s) {
    ggml_context * ctx = nullptr;
    gguf_init_params p = { /*.no_alloc =*/ false, /*.ctx =*/ &ctx };
    gguf_context * g = gguf_init_from_file(path.c_str(), p);
    if (!g) {
        throw std::runtime_error("cannot read the optimizer state " + path);
    }
    const int64_t kid = gguf_find_key(g, "valley.opt.iter");
    s.pending_iter = kid >= 0 ? (int64_t) gguf_get_val_u64(g, kid) : 0;
    for (auto & it : adapter->ab_map) {
        for (ggml_tensor * param : { it.second.a, it.second.b }) {
            for (int which = 0; which < 2; ++which) {
                const std::string n = std::string(param->name) + (which == 0 ? ".m" : ".v");
                const ggml_tensor * t = ggml_get_tensor(ctx, n.c_str());
                if (!t || ggml_nelements(t) != ggml_nelements(param)) {
                    gguf_free(g);
                    ggml_free(ctx);
                    throw std::runtime_error("the optimizer state " + path + " lacks " + n);
                }
                const float * d = (const float *) t->data;
                (which == 0 ? s.pending_m : s.pending_v).emplace_back(param, std::vector<float>(d, d + ggml_nelements(t)));
            }
        }
    }
    gguf_free(g);
    ggml_free(ctx);
    if (s.pending_iter < 1) {
        throw std::runtime_error("the optimizer state " + path + " has no iteration count");
    }
}

// peak resident memory of this process so far, MiB (for the benchmarks)
double max_rss_mib() {
    struct rusage ru = {};
    getrusage(RUSAGE_SELF, &ru);
    return (double) ru.ru_maxrss / 1024.0;  // Linux: KiB
}

std::string fmt_num(double x) {
    if (!std::isfinite(x)) {
        return "null";
    }
    char buf[64];
    snprintf(buf, sizeof(buf), "%.6g", x);
    return buf;
}

int check_backward(const options & o) {
    ggml_type t = GGML_TYPE_COUNT;
    for (ggml_type c : { GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16 }) {
        if (o.check_backward == ggml_type_name(c)) {
            t = c;
        }
    }
    if (t == GGML_TYPE_COUNT) {
        bad_input("--check-backward takes f32|f16|bf16, got '" + o.check_backward + "'");
    }
    llama_backend_init();
    bool all = true;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_ACCEL) {
            continue;
        }
        // shapes of a small layer with odd sizes, so that no tile fits exactly
        const auto r = valley_check_backward(dev, t, 320, 200, 72, 1);
        json row;
        row["device"]    = ggml_backend_dev_name(dev);
        row["type"]      = ggml_type_name(t);
        row["supported"] = r.err_typed >= 0;
        row["rel_err"]   = r.err_typed;
        row["rel_err_f32_path"] = r.err_f32;
        printf("%s\n", row.dump().c_str());
        all = all && r.err_typed >= 0;
    }
    llama_backend_free();
    return all ? 0 : 1;
}

// flash attention's backward op (patch 0010; CUDA: 0011) on every device against a double-precision reference:
// shapes that leave partial tiles (CPU: 32 query rows x 64 keys; CUDA: 32 x 32), head sizes that are not
// multiples of 32, grouped-query attention, and the three kinds of mask (none, packing with a fully masked
// row, additive values with -inf holes). One JSON line per case; exit 1 if a device cannot run it or errs
// beyond 1e-5 (F32 throughout: a wrong index or tile bound shows as O(1))
int check_flash_attn() {
    struct shape { int64_t dk, dv, n, m, h, hk; int mask; };
    const shape cases[] = {
        { 32, 32, 100, 100, 4, 2, 0 }, { 32, 32, 100, 100, 4, 2, 1 }, { 32, 32, 100, 100, 4, 2, 2 },
        { 40, 24,  67, 130, 3, 1, 1 }, { 40, 24,  67, 130, 3, 1, 2 }, { 128, 128, 200, 200, 4, 1, 1 },
    };
    llama_backend_init();
    bool all = true;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_ACCEL) {
            continue;
        }
        for (const auto & c : cases) {
            double err = valley_check_flash_attn_back(dev, c.dk, c.dv, c.n, c.m, c.h, c.hk, c.mask, 1);
            if (err >= 0 && !std::isfinite(err)) {
                err = INFINITY;
            }
            json row;
            row["device"] = ggml_backend_dev_name(dev);
            row["shape"]  = { { "dk", c.dk }, { "dv", c.dv }, { "n", c.n }, { "m", c.m }, { "heads", c.h }, { "kv_heads", c.hk } };
            row["mask"]   = c.mask == 0 ? "none" : c.mask == 1 ? "packing" : "additive";
            row["supported"] = err >= 0;
            row["rel_err"]   = std::isfinite(err) ? json(err) : json("inf");
            printf("%s\n", row.dump().c_str());
            fflush(stdout);
            all = all && err >= 0 && err <= 1e-5;
        }
    }
    llama_backend_free();
    return all ? 0 : 1;
}

int estimate_memory(const options & o) {
    valley_memory_config mc;
    mc.window  = o.ctx > 0 ? o.ctx : o.max_seq_len - 1;  // a run's window: the longest input, rounded up
    mc.rank    = o.rank;
    mc.targets = o.targets;
    mc.batch   = o.batch;
    // the stage passes --gpus N for a GPU run
    const bool planned_gpu = o.device != "cpu" && o.gpus > 0;
    std::string gpu_err;
    const std::vector<ggml_backend_dev_t> gpus = planned_gpu ? valley_pick_gpus(o.gpus, gpu_err) : std::vector<ggml_backend_dev_t>{};
    mc.flash_attn = use_flash_attn(o, gpus_take_flash_attn(gpus, o.model, planned_gpu));
    mc.checkpointing = use_checkpointing(o);
    valley_memory_estimate e;
    try {
        e = valley_estimate_memory(o.model, mc);
    } catch (const std::exception & ex) {
        bad_input(ex.what());
    }
    json j;
    j["window"] = e.window;
    j["bytes"] = { { "weights", (int64_t) e.weights }, { "adapter", (int64_t) e.adapter },
                   { "kvCache", (int64_t) e.kv_cache }, { "attention", (int64_t) e.attention },
                   { "activations", (int64_t) e.activations }, { "logits", (int64_t) e.logits },
                   { "runtime", (int64_t) e.runtime } };
    j["total"] = (int64_t) e.total();
    printf("%s\n", j.dump().c_str());
    return 0;
}

int run(const options & o) {
    g_verbose = o.verbose;
    llama_log_set(log_cb, nullptr);
    if (!o.check_backward.empty()) {
        return check_backward(o);
    }
    if (o.check_flash_attn) {
        return check_flash_attn();
    }
    if (o.estimate_memory) {
        return estimate_memory(o);
    }

    const base_info bi = o.render_text.empty() ? read_base_info(o.model) : base_info{};
    std::vector<std::string> target_names;
    int   rank  = o.rank;
    float alpha = o.alpha;
    if (o.render_text.empty()) {
        if (o.adapter_in.empty()) {
            target_names = resolve_targets(o, bi);
        } else {
            // the adapter decides what is trained
            const adapter_info ai = read_adapter_info(o.adapter_in, bi);
            target_names = ai.targets;
            rank  = ai.rank;
            alpha = ai.alpha;
        }
    }
    if (!o.grad_out.empty()) {
        // a reference gradient: every tensor of the base in a float type
        for (const auto & it : bi.types) {
            if (it.second != GGML_TYPE_F32 && it.second != GGML_TYPE_F16) {
                bad_input("--grad-out needs a base whose tensors are all F32 or F16, but " + it.first + " is " +
                          ggml_type_name(it.second) + "; convert it (llama-quantize --allow-requantize base.gguf base-f32.gguf F32)");
            }
        }
    }

    // read the dataset (before loading the model weights, so bad data fails fast)
    std::vector<json> rows;
    {
        std::ifstream f(o.data);
        if (!f) {
            bad_input("cannot read the dataset " + o.data);
        }
        std::string line;
        size_t ln = 0;
        while (std::getline(f, line)) {
            ++ln;
            if (line.find_first_not_of(" \t\r") == std::string::npos) {
                continue;
            }
            try {
                rows.push_back(json::parse(line));
            } catch (const std::exception & e) {
                bad_input("line " + std::to_string(ln) + " of " + o.data + " is not JSON: " + e.what());
            }
        }
    }
    if (rows.empty()) {
        bad_input("the dataset " + o.data + " is empty");
    }

    llama_backend_init();

    std::string gpu_err;
    std::vector<ggml_backend_dev_t> gpus =
        o.device == "cpu" || !o.render_text.empty() ? std::vector<ggml_backend_dev_t>{} : valley_pick_gpus(o.gpus, gpu_err);
    if (!gpu_err.empty()) {
        bad_input("--gpus: " + gpu_err);
    }
    const bool on_gpu = !gpus.empty();
    // flash attention under auto: decided once, from what the training devices can run
    const bool flash_attn = use_flash_attn(o, gpus_take_flash_attn(gpus, o.model, false));
    if (on_gpu && o.flash_attn == "auto" && !flash_attn) {
        info("flash attention off: a GPU here lacks the forward or backward op for this base's head sizes "
             "(attention memory is quadratic in the window)");
    }
    if (o.render_text.empty()) {
        // the backward pass goes through every frozen matrix with OUT_PROD: ask each device that holds
        // weights whether it can for the base's types (this build's CPU: F32, F16, BF16, quantized;
        // CUDA: F32, F16, BF16 with patch 0006)
        std::vector<ggml_backend_dev_t> devs = gpus;
        if (devs.empty()) {
            devs.push_back(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
        }
        for (const auto & it : bi.types) {
            // token_embd only feeds GET_ROWS, unless it is also the output layer (tied embeddings)
            const bool skip = it.first == "token_embd.weight" && bi.shapes.count("output.weight") > 0;
            if (skip || bi.shapes.at(it.first)[1] <= 1) {
                continue;
            }
            for (auto * dev : devs) {
                if (!valley_backward_supported(dev, it.second)) {
                    bad_input(std::string("the backward pass cannot go through ") + ggml_type_name(it.second) + " weights on " +
                              ggml_backend_dev_name(dev) + " (" + it.first + "): OUT_PROD does not take them there; "
                              "convert the base (llama-quantize --allow-requantize base.gguf base-bf16.gguf BF16, or F16, F32)" +
                              (on_gpu ? " or train with --device cpu" : ""));
                }
            }
        }
        if (o.memory_limit_mib > 0 || on_gpu) {
            valley_memory_config mc;
            mc.window  = o.ctx > 0 ? o.ctx : o.max_seq_len - 1;
            mc.rank    = o.rank;
            mc.targets = o.targets;
            mc.batch   = o.batch;
            mc.flash_attn = flash_attn;
            mc.checkpointing = use_checkpointing(o);
            const double need = valley_estimate_memory(o.model, mc).total();
            double limit = o.memory_limit_mib * 1024.0 * 1024.0;
            std::string where = "of --memory-limit";
            if (on_gpu) {
                double gpu_total = 0;  // layers are split over the GPUs in proportion to their memory
                for (auto * dev : gpus) {
                    size_t free = 0, total = 0;
                    ggml_backend_dev_memory(dev, &free, &total);
                    gpu_total += (double) free;
                }
                if (limit == 0 || gpu_total < limit) {
                    limit = gpu_total;
                    where = "free on " + std::to_string(gpus.size()) + " GPU(s)";
                }
            }
            if (need > limit) {
                char buf[256];
                snprintf(buf, sizeof(buf), "the memory model estimates %.2f GiB for a window of up to %lld tokens, more than the %.2f GiB ",
                         need / 1073741824.0, (long long) ((mc.window + 255) / 256 * 256), limit / 1073741824.0);
                bad_input(std::string(buf) + where + "; lower --max-seq-len or --rank, or use a BF16/F16 base "
                          "(valley-lora --estimate-memory prints the terms)");
            }
        }
    }

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = on_gpu ? 999 : 0;
    std::vector<ggml_backend_dev_t> mp_devices = gpus;
    mp_devices.push_back(nullptr);
    if (on_gpu) {
        mp.devices    = mp_devices.data();  // the layers are split over these (and only these) GPUs
        mp.split_mode = LLAMA_SPLIT_MODE_LAYER;
    }
    mp.vocab_only   = !o.render_text.empty();
    // repacked weights (AMX, CPU_REPACK buffers) support the forward ops only: the backward pass
    // (OUT_PROD through the frozen matrices) would find no backend for them
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(o.model.c_str(), mp);
    if (!model) {
        bad_input("cannot load the base model " + o.model);
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const char * tmpl = llama_model_chat_template(model, nullptr);
    if (!tmpl) {
        info("the model has no chat template; using chatml");
        tmpl = "chatml";
    }

    if (!o.render_text.empty()) {
        std::string text;
        for (size_t i = 0; i < rows.size(); ++i) {
            text += build_example(rows[i], i + 1, tmpl, vocab).text;
        }
        write_file_atomic(o.render_text, text);
        info("rendered %zu chats (%zu bytes) to %s", rows.size(), text.size(), o.render_text.c_str());
        llama_model_free(model);
        llama_backend_free();
        return 0;
    }

    // tokenize, apply masking, truncate or drop
    std::vector<example> exs;
    int64_t dropped = 0, truncated = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
        example ex = build_example(rows[i], i + 1, tmpl, vocab);
        if ((int) ex.tokens.size() > o.max_seq_len) {
            if (o.overlong == "drop") {
                ++dropped;
                continue;
            }
            ex.tokens.resize((size_t) o.max_seq_len);
            ex.assistant.resize((size_t) o.max_seq_len);
            // nothing left to learn once the assistant part is cut off
            if (std::find(ex.assistant.begin() + 1, ex.assistant.end(), 1) == ex.assistant.end()) {
                ++dropped;
                continue;
            }
            ++truncated;
        }
        exs.push_back(std::move(ex));
    }
    if (exs.empty()) {
        bad_input("no example is left to train on: " + std::to_string(dropped) + " dropped, " +
                  (o.overlong == "drop" ? "longer than --max-seq-len " + std::to_string(o.max_seq_len)
                                        : "no assistant token left once cut to --max-seq-len " + std::to_string(o.max_seq_len)));
    }
    size_t longest = 0;
    for (const auto & ex : exs) {
        longest = std::max(longest, ex.tokens.size() - 1);  // inputs: every token but the last
    }
    uint32_t n_ctx = (uint32_t) (o.ctx > 0 ? o.ctx : (int) longest);
    n_ctx = (n_ctx + 255) / 256 * 256;  // llama.cpp rounds the context up to a multiple of 256
    if (longest > n_ctx) {
        bad_input("--ctx " + std::to_string(o.ctx) + " is shorter than the longest example (" + std::to_string(longest) + " tokens)");
    }
    const int64_t n_ex = (int64_t) exs.size();
    const bool single_pass = !o.grad_out.empty() || o.eval_only;  // gradient check: all the data as one step

    // windows: one example each, or (packing) best fit: each example, in the given order, goes to the
    // window it fills best (the least room left), a new window when none has room; a packed window
    // holds at most MAX_PACK examples (each is one llama.cpp sequence)
    constexpr size_t MAX_PACK = 255;  // LLAMA_MAX_SEQ (256) less one sequence for the padding
    auto make_windows = [&](const std::vector<int64_t> & ord) {
        std::vector<std::vector<int64_t>> wins;
        std::vector<size_t> used;
        for (const int64_t i : ord) {
            const size_t n_in = exs[(size_t) i].tokens.size() - 1;
            size_t best = wins.size();
            for (size_t w = 0; o.packing && w < wins.size(); ++w) {
                if (used[w] + n_in <= n_ctx && wins[w].size() < MAX_PACK && (best == wins.size() || used[w] > used[best])) {
                    best = w;
                }
            }
            if (best == wins.size()) {
                wins.emplace_back();
                used.push_back(0);
            }
            wins[best].push_back(i);
            used[best] += n_in;
        }
        return wins;
    };
    auto order_of_epoch = [&](int64_t epoch) {
        std::vector<int64_t> ord((size_t) n_ex);
        for (int64_t i = 0; i < n_ex; ++i) {
            ord[(size_t) i] = i;
        }
        if (single_pass) {
            return ord;  // the data file's order
        }
        std::mt19937_64 rng(((uint64_t) o.seed << 20) ^ (uint64_t) (epoch + 1));
        for (int64_t i = n_ex - 1; i > 0; --i) {  // Fisher-Yates on raw draws: portable
            std::swap(ord[(size_t) i], ord[(size_t) (rng() % (uint64_t) (i + 1))]);
        }
        return ord;
    };
    // the plan: every epoch's windows, `batch` windows per optimizer step (the last step of an epoch
    // wraps around to the epoch's first windows); a single pass is one step over every window
    std::vector<std::vector<std::vector<int64_t>>> epoch_windows;
    struct step_plan {
        int64_t epoch;
        std::vector<int64_t> windows;  // into epoch_windows[epoch]
    };
    std::vector<step_plan> plan;
    const int n_epochs = single_pass ? 1 : o.epochs;
    for (int64_t e = 0; e < n_epochs; ++e) {
        epoch_windows.push_back(make_windows(order_of_epoch(e)));
        const int64_t nw = (int64_t) epoch_windows.back().size();
        const int64_t per_step = single_pass ? nw : o.batch;
        for (int64_t j = 0; j * per_step < nw; ++j) {
            step_plan sp{ e, {} };
            for (int64_t k = 0; k < per_step; ++k) {
                sp.windows.push_back((j * per_step + k) % nw);
            }
            plan.push_back(std::move(sp));
        }
    }
    const int64_t windows_per_step = single_pass ? (int64_t) plan[0].windows.size() : o.batch;
    int64_t total_steps = (int64_t) plan.size();
    if (o.max_steps > 0 && !single_pass) {
        total_steps = std::min<int64_t>(total_steps, o.max_steps);
    }
    const int64_t steps_per_epoch = (int64_t) std::count_if(plan.begin(), plan.end(), [](const step_plan & s) { return s.epoch == 0; });

    // configuration fingerprint: a checkpoint is only resumed by the same run
    std::ostringstream cfg;
    cfg << TRAINER_VERSION << '|' << (o.fingerprint.empty() ? o.model + '|' + o.data : o.fingerprint) << '|' << rank
        << '|' << alpha << '|';
    for (const auto & t : target_names) {
        cfg << t << ',';
    }
    cfg << '|' << o.seed << '|' << o.lr << '|' << o.warmup << '|' << o.decay << '|' << o.weight_decay << '|' << o.epochs
        << '|' << o.batch << '|' << o.max_seq_len << '|' << o.overlong << '|' << o.masking << '|' << n_ctx << '|' << o.max_steps
        << '|' << o.loss_norm << '|' << o.packing << '|' << o.labels << '|' << o.adapter_in;
    const std::string config = cfg.str();

    // resume?
    int64_t start_step = 0;
    std::string adapter_path;
    json metrics_rows = json::array();
    // a checkpoint: checkpoint-<step>.gguf (the adapter), then checkpoint.json naming it (written last,
    // atomically), so that a kill at any moment leaves a consistent pair
    const std::string ckpt_state = o.checkpoint_dir.empty() || single_pass ? "" : o.checkpoint_dir + "/checkpoint.json";
    std::string ckpt_adapter;
    std::string ckpt_opt;
    if (!ckpt_state.empty() && file_exists(ckpt_state)) {
        try {
            std::ifstream f(ckpt_state);
            json st = json::parse(f);
            ckpt_adapter = o.checkpoint_dir + "/" + st.value("adapter", "");
            ckpt_opt     = o.checkpoint_dir + "/" + st.value("optimizer", "");
            if (st.value("config", "") == config && file_exists(ckpt_adapter) && file_exists(ckpt_opt)) {
                start_step   = st.at("step").get<int64_t>();
                metrics_rows = st.at("metrics");
                adapter_path = ckpt_adapter;
                info("resuming from the checkpoint at step %lld of %lld", (long long) start_step, (long long) total_steps);
            } else {
                info("ignoring a checkpoint made with other settings");
            }
        } catch (const std::exception & e) {
            info("ignoring an unreadable checkpoint: %s", e.what());
        }
    }
    bool remove_init = false;
    if (adapter_path.empty() && !o.adapter_in.empty()) {
        adapter_path = o.adapter_in;
    } else if (adapter_path.empty()) {
        const std::string base = !o.checkpoint_dir.empty() ? o.checkpoint_dir + "/adapter"
                               : !o.out.empty()            ? o.out
                               : !o.grad_out.empty()       ? o.grad_out
                                                           : o.summary;
        adapter_path = base + ".init.gguf";
        write_initial_adapter(adapter_path, o, bi, target_names);
        remove_init = true;
    }

    // adapter BEFORE the context, so that the graph's node budget counts the LoRA nodes
    llama_adapter_lora * adapter = llama_adapter_lora_init(model, adapter_path.c_str());
    if (remove_init) {
        std::remove(adapter_path.c_str());
    }
    if (!adapter) {
        bad_input("cannot load the adapter " + adapter_path + " (its tensors must match the base model's shapes)");
    }

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx           = n_ctx;
    cp.n_batch         = n_ctx;
    cp.n_ubatch        = n_ctx;  // a window is one ubatch: attention sees the window's own K and V only
    cp.n_seq_max       = 1;
    cp.kv_unified      = true;   // packed examples are sequences 0, 1, ... of one window
    cp.type_k          = GGML_TYPE_F32;  // OUT_PROD needs F32 K/V
    cp.type_v          = GGML_TYPE_F32;
    // with flash attention off the training graph materialises softmax(K·Q) per layer (exact, quadratic memory)
    cp.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.op_offload      = on_gpu;
    if (o.threads > 0) {
        cp.n_threads       = o.threads;
        cp.n_threads_batch = o.threads;
    }
    llama_context * lctx = llama_init_from_model(model, cp);
    if (!lctx) {
        throw std::runtime_error("cannot create a context of " + std::to_string(n_ctx) + " tokens");
    }
    float one = 1.0f;
    if (llama_set_adapters_lora(lctx, &adapter, 1, &one) != 0) {
        throw std::runtime_error("cannot attach the adapter");
    }

    schedule sched;
    sched.lr    = o.lr;
    sched.wd    = o.weight_decay;
    sched.decay = o.decay;
    sched.total = total_steps;
    sched.warm  = (int64_t) std::ceil(o.warmup * (double) total_steps);
    sched.step  = start_step;
    sched.lctx  = lctx;
    // the gradient: one AdamW step with lr ~0 (nothing moves) and beta1 0, so that its first moment
    // is exactly the gradient accumulated over every window
    sched.grad_only = single_pass;
    if (start_step > 0) {
        load_optimizer(ckpt_opt, adapter, sched);
    }

    llama_opt_params op = {};
    op.n_ctx_train     = n_ctx;
    op.param_filter    = freeze_all;
    op.param_filter_ud = nullptr;
    op.get_opt_pars    = opt_pars_cb;
    op.get_opt_pars_ud = &sched;
    op.optimizer_type  = GGML_OPT_OPTIMIZER_TYPE_ADAMW;
    op.n_accum         = (uint32_t) windows_per_step;
    op.labels_sparse   = o.labels == "sparse";
    op.checkpointing   = use_checkpointing(o);
    llama_opt_init(lctx, model, op);
    int64_t n_params = 0;
    for (auto & it : adapter->ab_map) {
        ggml_set_param(it.second.a);
        ggml_set_param(it.second.b);
        n_params += ggml_nelements(it.second.a) + ggml_nelements(it.second.b);
    }
    info("%lld examples (%lld dropped, %lld truncated), window %u tokens, %zu target tensors, %lld trainable parameters, "
         "%lld steps (%lld per epoch, %lld windows each)%s%s", (long long) n_ex, (long long) dropped, (long long) truncated, n_ctx,
         adapter->ab_map.size(), (long long) n_params, (long long) total_steps, (long long) steps_per_epoch,
         (long long) windows_per_step, o.packing ? ", packed" : "", on_gpu ? ", on the GPU" : "");

    const llama_token pad = llama_vocab_eos(vocab) >= 0 ? llama_vocab_eos(vocab) : 0;
    ggml_opt_dataset_t ds = ggml_opt_dataset_init(GGML_TYPE_I32, GGML_TYPE_I32, n_ctx, n_ctx, windows_per_step, 1);
    int32_t * ds_data   = (int32_t *) ggml_opt_dataset_data(ds)->data;
    int32_t * ds_labels = (int32_t *) ggml_opt_dataset_labels(ds)->data;
    std::vector<llama_seq_id> seq_ids((size_t) windows_per_step * n_ctx);

    struct window_fill {
        int64_t tokens = 0;  // input tokens (not padding)
        int64_t labels = 0;  // trained positions
    };
    // fill window k of the step dataset with these examples, one sequence each; padding is never a target
    auto fill = [&](int64_t k, const std::vector<int64_t> & win, bool masked) -> window_fill {
        int32_t * d = ds_data + (size_t) k * n_ctx;
        int32_t * l = ds_labels + (size_t) k * n_ctx;
        llama_seq_id * s = seq_ids.data() + (size_t) k * n_ctx;
        window_fill wf;
        size_t p = 0;
        for (size_t e = 0; e < win.size(); ++e) {
            const example & ex = exs[(size_t) win[e]];
            const size_t n_in = ex.tokens.size() - 1;
            for (size_t q = 0; q < n_in; ++q, ++p) {
                d[p] = ex.tokens[q];
                const bool train = !masked || ex.assistant[q + 1];
                l[p] = train ? ex.tokens[q + 1] : -1;
                s[p] = (llama_seq_id) e;
                wf.labels += train;
            }
            wf.tokens += (int64_t) n_in;
        }
        for (; p < n_ctx; ++p) {
            d[p] = pad;
            l[p] = -1;
            s[p] = (llama_seq_id) win.size();
        }
        return wf;
    };
    // each window's factor on its mean token loss (ggml-opt divides the sum of the windows' losses by
    // their number): token = n_labels(window) * windows / n_labels(step), a mean over the step's tokens;
    // example = 1, a mean of the examples' means (one example per window)
    auto set_windows = [&](const std::vector<window_fill> & wf, bool per_token) {
        std::vector<float> w(wf.size(), 1.0f);
        int64_t n_lab = 0;
        for (const auto & f : wf) {
            n_lab += f.labels;
        }
        if (per_token) {
            for (size_t k = 0; k < wf.size(); ++k) {
                w[k] = (float) ((double) wf[k].labels * (double) wf.size() / (double) std::max<int64_t>(n_lab, 1));
            }
        }
        llama_opt_set_windows(lctx, (int64_t) wf.size(), o.packing ? seq_ids.data() : nullptr, w.data());
    };

    // --grad-out / --eval-only: all the data as one step, nothing trained
    if (single_pass) {
        const auto & sp = plan[0];
        std::vector<window_fill> wf;
        int64_t n_lab = 0;
        for (size_t k = 0; k < sp.windows.size(); ++k) {
            wf.push_back(fill((int64_t) k, epoch_windows[0][(size_t) sp.windows[k]], o.masking));
            n_lab += wf.back().labels;
        }
        set_windows(wf, o.loss_norm == "token");
        ggml_opt_result_t res = ggml_opt_result_init();
        const auto t0 = std::chrono::steady_clock::now();
        if (o.eval_only) {
            llama_opt_epoch(lctx, ds, nullptr, res, 0, nullptr, nullptr);
        } else {
            llama_opt_epoch(lctx, ds, res, nullptr, windows_per_step, nullptr, nullptr);
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        double loss = NAN, unc = 0.0;
        ggml_opt_result_loss(res, &loss, &unc);
        ggml_opt_result_free(res);
        if (!std::isfinite(loss)) {
            throw std::runtime_error("the loss is not finite");
        }
        if (!o.grad_out.empty()) {
            save_gradients(o.grad_out, lctx, adapter, bi.arch, alpha);
        }
        info("loss %.8g over %lld trained tokens in %zu windows (%.2f s)%s", loss, (long long) n_lab, wf.size(), secs,
             o.grad_out.empty() ? "" : (", gradients written to " + o.grad_out).c_str());
        if (!o.summary.empty()) {
            json s;
            s["trainer"]  = TRAINER_VERSION;
            s["loss"]     = loss;
            s["tokens"]   = n_lab;
            s["windows"]  = (int64_t) wf.size();
            s["examples"] = n_ex;
            s["window"]   = n_ctx;
            s["loss_norm"] = o.loss_norm;
            s["seconds"]  = secs;
            s["max_rss_mib"] = max_rss_mib();
            write_file_atomic(o.summary, s.dump(2) + "\n");
        }
        ggml_opt_dataset_free(ds);
        llama_free(lctx);
        llama_model_free(model);
        llama_backend_free();
        return 0;
    }

    FILE * mf = nullptr;
    if (!o.metrics.empty()) {
        // rewrite the rows kept by the checkpoint, then append
        std::string kept;
        for (const auto & r : metrics_rows) {
            kept += r.dump() + "\n";
        }
        write_file_atomic(o.metrics, kept);
        mf = fopen(o.metrics.c_str(), "a");
        if (!mf) {
            throw std::runtime_error("cannot write " + o.metrics);
        }
    }

    ggml_opt_result_t result = ggml_opt_result_init();
    const auto t_train0 = std::chrono::steady_clock::now();
    int64_t run_tokens = 0, run_windows = 0;
    for (int64_t step = start_step; step < total_steps; ++step) {
        const auto & sp = plan[(size_t) step];
        const int64_t epoch = sp.epoch;
        int64_t step_tokens = 0, step_labels = 0;
        std::vector<window_fill> wf;
        for (size_t k = 0; k < sp.windows.size(); ++k) {
            wf.push_back(fill((int64_t) k, epoch_windows[(size_t) epoch][(size_t) sp.windows[k]], o.masking));
            step_tokens += wf.back().tokens;
            step_labels += wf.back().labels;
        }
        set_windows(wf, o.loss_norm == "token");
        sched.step = step;
        const float lr = sched.lr_at(step);
        const auto t0 = std::chrono::steady_clock::now();
        ggml_opt_result_reset(result);
        llama_opt_epoch(lctx, ds, result, nullptr, windows_per_step, nullptr, nullptr);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        double loss = 0.0, unc = 0.0, acc = 0.0, acc_unc = 0.0;
        ggml_opt_result_loss(result, &loss, &unc);
        ggml_opt_result_accuracy(result, &acc, &acc_unc);
        run_tokens += step_tokens;
        run_windows += (int64_t) wf.size();

        json row;
        row["step"]        = step + 1;
        row["epoch"]       = epoch + 1;
        row["loss"]        = std::stod(fmt_num(loss));
        row["lr"]          = std::stod(fmt_num(lr));
        row["tokens"]      = step_labels;
        row["seq_tokens"]  = step_tokens;
        row["accuracy"]    = std::isfinite(acc) ? std::stod(fmt_num(acc)) : 0.0;
        row["seconds"]     = std::stod(fmt_num(secs));
        metrics_rows.push_back(row);
        if (mf) {
            fprintf(mf, "%s\n", row.dump().c_str());
            fflush(mf);
        }
        if (!std::isfinite(loss)) {
            throw std::runtime_error("the loss is not finite at step " + std::to_string(step + 1) + " (lower --lr?)");
        }
        if (o.verbose || (step + 1) % 10 == 0 || step + 1 == total_steps) {
            info("step %lld/%lld epoch %lld loss %.4f lr %.3g %.0f tok/s", (long long) (step + 1), (long long) total_steps,
                 (long long) (epoch + 1), loss, lr, (double) step_tokens / std::max(secs, 1e-9));
        }
        if (!o.checkpoint_dir.empty() && o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0 && step + 1 < total_steps) {
            const std::string name = "checkpoint-" + std::to_string(step + 1) + ".gguf";
            const std::string opt_name = "checkpoint-" + std::to_string(step + 1) + ".opt.gguf";
            save_adapter(o.checkpoint_dir + "/" + name, adapter, bi.arch, alpha);
            save_optimizer(o.checkpoint_dir + "/" + opt_name, lctx, adapter);
            json st;
            st["version"] = TRAINER_VERSION;
            st["config"]  = config;
            st["step"]    = step + 1;
            st["adapter"] = name;
            st["optimizer"] = opt_name;
            st["metrics"] = metrics_rows;
            write_file_atomic(ckpt_state, st.dump() + "\n");
            if (!ckpt_adapter.empty() && ckpt_adapter != o.checkpoint_dir + "/" + name) {
                std::remove(ckpt_adapter.c_str());
            }
            if (!ckpt_opt.empty() && ckpt_opt != o.checkpoint_dir + "/" + opt_name) {
                std::remove(ckpt_opt.c_str());
            }
            ckpt_adapter = o.checkpoint_dir + "/" + name;
            ckpt_opt     = o.checkpoint_dir + "/" + opt_name;
        }
    }
    const double train_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_train0).count();
    if (mf) {
        fclose(mf);
    }

    save_adapter(o.out, adapter, bi.arch, alpha);

    // optional: loss on the assistant tokens only, whatever --masking was (forward passes, one example per
    // window, the mean of the windows' mean losses)
    double eval_loss = NAN, eval_acc = NAN;
    if (o.eval_assistant) {
        ggml_opt_result_t res_eval = ggml_opt_result_init();
        llama_opt_set_windows(lctx, 0, nullptr, nullptr);
        for (int64_t i = 0; i < n_ex; i += windows_per_step) {
            for (int64_t k = 0; k < windows_per_step; ++k) {
                fill(k, { (i + k) % n_ex }, true);
            }
            llama_opt_epoch(lctx, ds, nullptr, res_eval, 0, nullptr, nullptr);
        }
        double unc = 0.0;
        ggml_opt_result_loss(res_eval, &eval_loss, &unc);
        ggml_opt_result_accuracy(res_eval, &eval_acc, &unc);
        ggml_opt_result_free(res_eval);
        info("assistant-only loss after training: %.4f (accuracy %.3f)", eval_loss, eval_acc);
    }

    // summary
    if (!o.summary.empty()) {
        double first = NAN, last = NAN, minl = INFINITY;
        int64_t tokens = 0;
        std::map<int64_t, std::pair<double, int64_t>> per_epoch;
        for (const auto & r : metrics_rows) {
            const double l = r.at("loss").get<double>();
            if (!std::isfinite(first)) {
                first = l;
            }
            last = l;
            minl = std::min(minl, l);
            tokens += r.at("tokens").get<int64_t>();
            auto & pe = per_epoch[r.at("epoch").get<int64_t>()];
            pe.first += l;
            pe.second += 1;
        }
        json s;
        s["trainer"]            = TRAINER_VERSION;
        s["first_loss"]         = first;
        s["last_loss"]          = last;
        s["min_loss"]           = minl;
        s["steps"]              = (int64_t) metrics_rows.size();
        s["tokens"]             = tokens;
        s["resumed_from_step"]  = start_step;
        s["dropped"]            = dropped;
        s["truncated"]          = truncated;
        s["examples"]           = n_ex;
        s["window"]             = n_ctx;
        s["windows"]            = run_windows;
        s["trainable_params"]   = n_params;
        s["loss_norm"]          = o.loss_norm;
        s["packing"]            = o.packing;
        s["labels"]             = o.labels;
        s["flash_attn"]         = flash_attn;
        s["checkpointing"]      = use_checkpointing(o);
        json em = json::array();
        for (const auto & it : per_epoch) {
            em.push_back(it.second.first / (double) it.second.second);
        }
        s["epoch_mean_loss"]    = em;
        s["train_seconds"]      = train_secs;
        s["seq_tokens_per_second"] = train_secs > 0 ? (double) run_tokens / train_secs : 0.0;
        s["max_rss_mib"]        = max_rss_mib();
        struct rusage ru = {};
        getrusage(RUSAGE_SELF, &ru);
        s["peak_rss_bytes"] = (int64_t) ru.ru_maxrss * 1024;  // Linux: KiB; what the memory model predicts on the CPU
        if (o.eval_assistant) {
            s["assistant_loss"]     = eval_loss;
            s["assistant_accuracy"] = eval_acc;
        }
        write_file_atomic(o.summary, s.dump(2) + "\n");
    }

    ggml_opt_result_free(result);
    ggml_opt_dataset_free(ds);
    llama_free(lctx);
    llama_model_free(model);  // frees the adapter too
    llama_backend_free();
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    try {
        const options o = parse_args(argc, argv);
        return run(o);
    } catch (const input_error & e) {
        fprintf(stderr, "valley-lora: error: %s\n", e.what());
        return 2;
    } catch (const std::exception & e) {
        fprintf(stderr, "valley-lora: failed: %s\n", e.what());
        return 1;
    }
}
