// Continuous batching: many generation requests on one model at once, on one engine thread.
//
// Each step of the engine thread does one unit of prompt work for the oldest sequence still reading its prompt
// (one image tile through the vision tower, or one prefill chunk of at most `prefill_chunk` positions, chunks
// aligned to multiples of it) and then one decode token for every sequence already generating, all of them in
// one batched forward. Sequences join and leave between steps. A prompt's chunks depend only on that prompt,
// and no kernel mixes rows of different sequences in a way that changes a row's bits, so a sequence's logits are
// the same alone or batched with any others.
//
// Reuse:
// - KV blocks (model/kv_cache.h) are published under a hash of their content once full; a new request whose
//   prompt starts with the same tokens (image placeholders keyed by the image's pixel hash) takes them instead
//   of recomputing them. Unused published blocks stay cached until the pool needs them (LRU).
// - A Session keeps its conversation's blocks between turns (a chat); the next turn recomputes only what differs.
// - Image features are cached by a hash of the pixel values (MediaCache), so the same image is encoded once.
//
// Memory: a request is admitted when the blocks for its prompt and max_tokens fit next to those promised to the
// running ones; otherwise it waits (first come, first served). One that can never fit fails with
// kContextOverflow.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/content_hash.h"
#include "model/model.h"
#include "model/runner.h"

namespace plm {

class KvCache;

// One image or video of a prompt: its pixels and their content hash.
struct MediaItem {
  std::shared_ptr<const std::vector<float>> pixels;  // [tiles, 3, S, S]
  int64_t tiles = 0;
  Hash128 hash;  // hash_bytes of the pixels (set by Scheduler::submit when zero)
};

// The log-probability of a chosen token and the most likely alternatives.
struct TokenLogprobs {
  float logprob = 0.f;
  std::vector<std::pair<int32_t, float>> top;  // (token, logprob), most likely first
};

struct GenerateOptions {
  int max_tokens = 256;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // eos ids; empty: the checkpoint's generation_config eos list
  bool keep_logits = false;       // keep the logits row each token was chosen from (validation)
  // >= 0: report the log-probability of each chosen token and of the top_logprobs most likely ones, under the
  // distribution it was drawn from (after repetition penalty and temperature; greedy: the model's). -1: off.
  int top_logprobs = -1;
  // Called on the engine thread with each new token; return false to stop. Stop strings are the caller's.
  std::function<bool(int32_t token, const TokenLogprobs* logprobs)> on_token;
  // Constrained decoding: called on the engine thread before each token is drawn with its step index (0 for
  // the first token); returns the allowed tokens as a bit mask of vocab bits (bit t of byte t / 8), or null for
  // no constraint at this step. The pointer must stay valid until the next call.
  std::function<const uint8_t*(int64_t step)> allowed_tokens;
};

struct GenerateResult {
  std::vector<int32_t> tokens;      // generated ids only
  std::string finish_reason;        // "stop", "length", "cancelled"
  std::vector<float> logits;        // [tokens, vocab] when keep_logits
  std::vector<TokenLogprobs> logprobs;  // [tokens] when top_logprobs >= 0
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;        // prompt positions whose keys and values were reused, not computed
  // Milliseconds: waiting for admission; this request's own vision and prefill work (other sequences' steps
  // in between not counted); from submission to the first token; from the first token to the last.
  double queue_ms = 0, vision_ms = 0, prefill_ms = 0, first_token_ms = 0, decode_ms = 0;
};

class Scheduler;
// The link from sessions to their scheduler, cut when the scheduler goes away first.
struct SessionOwner {
  std::mutex mutex;
  Scheduler* scheduler = nullptr;
};

// A conversation whose keys and values stay in the cache between turns. Create with Scheduler::open_session;
// its blocks are released when the last reference goes.
class Session {
 public:
  ~Session();
  // Positions of the conversation held in the cache (any thread).
  int64_t cached_tokens() const { return length_.load(); }

 private:
  friend class Scheduler;
  explicit Session(std::shared_ptr<SessionOwner> owner) : owner_(std::move(owner)) {}
  std::shared_ptr<SessionOwner> owner_;
  // Engine-thread state: the blocks (one reference each) and the keys of the positions they hold.
  std::vector<int32_t> blocks_;
  std::vector<uint64_t> keys_;
  bool busy_ = false;  // a turn is running
  std::atomic<int64_t> length_{0};
};

struct SchedulerOptions {
  int max_sequences = 4;          // sequences generating at once; more wait
  int64_t max_context = 0;        // positions per sequence (prompt + generated)
  int64_t prefill_chunk = 256;    // a multiple of KvCache::kBlockTokens
  int64_t vision_tiles_per_step = 1;
  size_t media_cache_bytes = 256u << 20;  // image features kept for reuse
  // While prompts wait, the share of the engine's time that the generating sequences' decode steps get (0 to 1;
  // 0: prompts first, decode only when no prompt work is left). Default: PLM_DECODE_SHARE, else 0.5.
  double decode_share = -1;
};

struct SchedulerStats {
  int64_t active = 0, waiting = 0;
  int64_t kv_blocks_in_use = 0, kv_blocks_cached = 0, kv_blocks_capacity = 0, kv_block_bytes = 0;
  int64_t kv_bytes_resident = 0;   // blocks ever touched
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0;  // since load
  int64_t media_cache_bytes = 0, media_cache_hits = 0, media_encoded = 0;
  int64_t requests_deferred = 0;  // requests that waited for KV cache space before starting, since load
};

class Scheduler {
 public:
  // Exactly one of paged / legacy is set; both outlive the scheduler.
  Scheduler(const LoadedModel& model, PagedRunner* paged, Runner* legacy, const SchedulerOptions& options);
  ~Scheduler();  // cancels everything still running and joins the engine thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  struct Request {
    std::vector<int32_t> ids;     // the expanded prompt
    std::vector<MediaItem> media; // in prompt order; item i covers tiles_i * tokens_per_tile placeholders
    GenerateOptions options;
    std::shared_ptr<CancelToken> cancel;  // may be null
    std::shared_ptr<Session> session;     // may be null
    // Called once on the engine thread when the request ends: the result, or the error (result then empty).
    std::function<void(GenerateResult&& result, std::exception_ptr error)> on_done;
  };
  // Validates (throws plm::Error) and queues. The callbacks run on the engine thread.
  void submit(Request request);

  std::shared_ptr<Session> open_session();

  // Runs fn on the engine thread between steps, with no sequence running meanwhile, and returns when it is done
  // (rethrowing its exception). For validation entry points (forward with dumps, encode_images).
  void run_exclusive(const std::function<void()>& fn);

  // Engine thread only (inside run_exclusive): a fresh temporary block table for n positions, released by the
  // returned object's destructor.
  struct TempBlocks {
    KvCache* cache = nullptr;
    std::vector<int32_t> table;
    ~TempBlocks();
  };
  std::unique_ptr<TempBlocks> temp_blocks(int64_t n);
  // Engine thread only: the legacy runner's cache no longer holds what the scheduler recorded.
  void forget_legacy_prefix() { legacy_keys_.clear(); }

  void clear_cache();  // drops cached blocks and image features (not those of running sequences or sessions)
  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return options_; }

 private:
  enum class Phase { kPrompt, kDecode };
  struct Sequence;
  struct MediaState;

  void loop();
  void step();
  bool admit(Sequence& s);
  void prompt_unit(Sequence& s);
  void decode_step(std::vector<Sequence*>& seqs);
  void interleave_decode(const Sequence* current);
  static double default_decode_share();
  void legacy_run(Sequence& s);
  // Samples the next token from logits [vocab] (modified) and accepts it; false when the sequence ended.
  bool take_token(Sequence& s, float* logits);
  // Records a chosen token, emits it and checks the stop conditions; false when the sequence ended.
  bool accept_token(Sequence& s, int32_t token, const TokenLogprobs* logprobs);
  void finish(Sequence& s, const std::string& reason, std::exception_ptr error = nullptr);
  void ensure_blocks(Sequence& s, int64_t positions);
  void publish_full_blocks(Sequence& s);
  void end_session_turn(Sequence& s);
  void refresh_stats();  // engine thread: copies the counters for stats()
  friend class Session;
  void release_blocks_later(std::vector<int32_t> blocks);  // any thread

  const LoadedModel& model_;
  PagedRunner* paged_;
  Runner* legacy_;
  KvCache* cache_;
  SchedulerOptions options_;
  int64_t vocab_, tokens_per_tile_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> incoming_;  // submitted, not yet seen by the engine thread
  std::vector<std::function<void()>*> exclusive_;
  std::vector<int32_t> closing_blocks_;             // from closed sessions: the engine thread releases them
  std::shared_ptr<SessionOwner> session_owner_;
  std::vector<std::weak_ptr<CancelToken>> live_cancels_;  // cancelled when the scheduler stops
  size_t active_count_ = 0;                         // active_.size() as of the last refresh_stats
  bool stopping_ = false;
  SchedulerStats stats_;                            // guarded by mutex_ (copied out by stats())

  // Engine-thread state.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::list<std::unique_ptr<Sequence>> active_;  // admission order
  std::vector<uint64_t> legacy_keys_;            // what the legacy runner's cache holds
  std::vector<std::function<void()>*> deferred_; // exclusive jobs waiting for the legacy sequence to end
  std::unique_ptr<class MediaCache> media_cache_;
  std::vector<float> logits_;                    // [rows, vocab] of a decode step
  std::vector<float> prefill_logits_;            // [vocab] of a prompt's last chunk
  std::chrono::steady_clock::time_point next_interleave_{};  // no decode step inside a prompt unit before this
  std::thread thread_;
};

}  // namespace plm
