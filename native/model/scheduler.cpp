#include "model/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>

#include "core/error.h"
#include "model/kv_cache.h"
#include "model/sampler.h"

namespace plm {
namespace {

using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
constexpr int64_t B = KvCache::kBlockTokens;

}  // namespace

// Image features by pixel hash, least recently used dropped first beyond the byte budget. Entries in use by a
// sequence stay alive through its own reference.
class MediaCache {
 public:
  explicit MediaCache(size_t budget) : budget_(budget) {}
  std::shared_ptr<const std::vector<float>> get(const Hash128& h) {
    auto it = map_.find(h);
    if (it == map_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second.pos);
    return it->second.features;
  }
  void put(const Hash128& h, std::shared_ptr<const std::vector<float>> f) {
    const size_t bytes = f->size() * sizeof(float);
    if (bytes > budget_ || map_.count(h)) return;
    lru_.push_front(h);
    map_[h] = {std::move(f), bytes, lru_.begin()};
    bytes_ += bytes;
    while (bytes_ > budget_) {
      auto it = map_.find(lru_.back());
      bytes_ -= it->second.bytes;
      map_.erase(it);
      lru_.pop_back();
    }
  }
  void clear() {
    map_.clear();
    lru_.clear();
    bytes_ = 0;
  }
  size_t bytes() const { return bytes_; }

 private:
  struct Entry {
    std::shared_ptr<const std::vector<float>> features;
    size_t bytes;
    std::list<Hash128>::iterator pos;
  };
  size_t budget_, bytes_ = 0;
  std::list<Hash128> lru_;
  std::unordered_map<Hash128, Entry, Hash128Key> map_;
};

struct Scheduler::MediaState {
  std::shared_ptr<const std::vector<float>> features;  // [rows, hidden] once ready
  std::shared_ptr<std::vector<float>> filling;         // being encoded, tile by tile
  int64_t encoded_tiles = 0;
  bool needed = true;  // some placeholder row lies past the reused prefix
};

struct Scheduler::Sequence {
  Request req;
  int64_t n = 0;                    // prompt positions
  std::vector<uint64_t> keys;       // [n + generated] prefix-match keys of the positions
  std::vector<int32_t> item_of;     // [n] media item of a placeholder position, -1 for text
  std::vector<int32_t> row_of;      // [n] its feature row within the item
  std::vector<MediaState> media;
  std::vector<int32_t> table;       // block table, one reference per block
  std::vector<BlockHash> chain;     // hashes of the full blocks' contents, [0, chain.size())
  int64_t reserved = 0;             // blocks promised and not yet taken
  int64_t length = 0;               // positions whose keys and values are in the cache
  int64_t published = 0;           // leading blocks published
  Phase phase = Phase::kPrompt;
  std::vector<int32_t> history;     // prompt ids + generated (repetition penalty)
  std::unique_ptr<Sampler> sampler;
  int32_t next_token = -1;          // sampled, not yet fed
  GenerateResult result;
  Clock::time_point submitted, admitted, first_token;
  bool deferred = false;            // admission waited for KV cache space at least once (counted once)
};

Session::~Session() {
  std::lock_guard<std::mutex> lock(owner_->mutex);
  if (owner_->scheduler && !blocks_.empty()) owner_->scheduler->release_blocks_later(std::move(blocks_));
}

Scheduler::Scheduler(const LoadedModel& model, PagedRunner* paged, Runner* legacy, const SchedulerOptions& options)
    : model_(model),
      paged_(paged),
      legacy_(legacy),
      cache_(paged ? &paged->kv_cache() : nullptr),
      options_(options),
      vocab_(model.config.text.vocab_size),
      tokens_per_tile_(model.config.tokens_per_tile()),
      session_owner_(std::make_shared<SessionOwner>()),
      media_cache_(std::make_unique<MediaCache>(options.media_cache_bytes)) {
  if (!paged_ == !legacy_) throw Error(ErrorCode::kInternal, "Scheduler: exactly one runner");
  if (legacy_) options_.max_sequences = 1;
  options_.max_sequences = std::max(1, options_.max_sequences);
  options_.prefill_chunk = std::max<int64_t>(B, options_.prefill_chunk / B * B);
  options_.vision_tiles_per_step = std::max<int64_t>(1, options_.vision_tiles_per_step);
  if (!(options_.decode_share >= 0 && options_.decode_share <= 1)) options_.decode_share = default_decode_share();
  session_owner_->scheduler = this;
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(session_owner_->mutex);
    session_owner_->scheduler = nullptr;
  }
  {
    // Cancel every request still alive, so a long step (an image tile, a prefill chunk, a wait for a token
    // mask) ends at its next check instead of running to completion.
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (auto& w : live_cancels_)
      if (auto c = w.lock()) c->cancelled.store(true);
  }
  wake_.notify_all();
  thread_.join();
}

std::shared_ptr<Session> Scheduler::open_session() {
  return std::shared_ptr<Session>(new Session(session_owner_));
}

void Scheduler::release_blocks_later(std::vector<int32_t> blocks) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_blocks_.insert(closing_blocks_.end(), blocks.begin(), blocks.end());
  }
  wake_.notify_all();
}

void Scheduler::submit(Request request) {
  const ModelConfig& c = model_.config;
  const int64_t n = static_cast<int64_t>(request.ids.size());
  const GenerateOptions& o = request.options;
  if (n <= 0) throw Error(ErrorCode::kInvalidArgument, "the prompt is empty: pass at least one token");
  if (o.max_tokens < 1) throw Error(ErrorCode::kInvalidArgument, "maxTokens must be at least 1");
  if (o.top_logprobs > 20) throw Error(ErrorCode::kInvalidArgument, "topLogprobs must be at most 20");
  if (n + o.max_tokens > options_.max_context)
    throw Error(ErrorCode::kContextOverflow,
                "the prompt has " + std::to_string(n) + " tokens and asks for up to " + std::to_string(o.max_tokens) +
                    " more, but the context holds " + std::to_string(options_.max_context) +
                    ". Shorten the prompt, lower maxTokens, or use fewer image tiles (maxNumTiles) or video frames.");
  auto seq = std::make_unique<Sequence>();
  seq->n = n;
  seq->item_of.assign(static_cast<size_t>(n), -1);
  seq->row_of.assign(static_cast<size_t>(n), -1);
  int64_t tiles = 0;
  for (const MediaItem& m : request.media) {
    if (m.tiles <= 0 || !m.pixels)
      throw Error(ErrorCode::kInvalidArgument, "a media item has no tiles");
    const int64_t S = c.vision.image_size;
    if (static_cast<int64_t>(m.pixels->size()) != m.tiles * 3 * S * S)
      throw Error(ErrorCode::kInvalidArgument, "a media item's pixels do not hold " + std::to_string(m.tiles) +
                                                   " tiles of 3x" + std::to_string(S) + "x" + std::to_string(S));
    tiles += m.tiles;
  }
  if (tiles > 0 && !c.vision.present)
    throw Error(ErrorCode::kInvalidArgument, "this checkpoint has no vision tower, so it cannot take images");
  int64_t item = 0, row = 0, placeholders = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = request.ids[i];
    if (id < 0 || id >= c.text.vocab_size)
      throw Error(ErrorCode::kInvalidArgument, "token id " + std::to_string(id) + " at position " + std::to_string(i) +
                                                   " is outside the vocabulary");
    if (id != c.image_token_id && id != c.video_token_id) continue;
    ++placeholders;
    if (item < static_cast<int64_t>(request.media.size())) {
      seq->item_of[i] = static_cast<int32_t>(item);
      seq->row_of[i] = static_cast<int32_t>(row);
      if (++row == request.media[item].tiles * tokens_per_tile_) {
        ++item;
        row = 0;
      }
    }
  }
  if (placeholders != tiles * tokens_per_tile_)
    throw Error(ErrorCode::kInvalidArgument,
                "the prompt has " + std::to_string(placeholders) + " image/video placeholder tokens but " +
                    std::to_string(tiles) + " tiles give " + std::to_string(tiles * tokens_per_tile_) +
                    " feature rows (" + std::to_string(tokens_per_tile_) + " per tile). Expand each <|image|> to " +
                    std::to_string(tokens_per_tile_) + " x tiles placeholders.");
  if (cache_) {
    const int64_t blocks = (n + o.max_tokens - 1 + B - 1) / B;
    if (blocks > cache_->capacity())
      throw Error(ErrorCode::kContextOverflow,
                  "the request needs the keys and values of " + std::to_string(n + o.max_tokens - 1) +
                      " positions (" + std::to_string(blocks) + " KV blocks) but the KV cache budget holds " +
                      std::to_string(cache_->capacity() * B) +
                      ": raise kvCacheBytes, or shorten the prompt or maxTokens.");
  }
  if (request.session) {
    if (request.session->owner_ != session_owner_)
      throw Error(ErrorCode::kInvalidArgument, "this chat session belongs to another model");
  }
  if (!request.cancel) request.cancel = std::make_shared<CancelToken>();
  seq->req = std::move(request);
  seq->submitted = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) throw Error(ErrorCode::kDisposed, "the model was disposed; load it again with loadModel()");
    if (live_cancels_.size() > 64 + 2 * (active_count_ + incoming_.size()))  // forget the ended ones now and then
      live_cancels_.erase(std::remove_if(live_cancels_.begin(), live_cancels_.end(),
                                         [](const std::weak_ptr<CancelToken>& w) { return w.expired(); }),
                          live_cancels_.end());
    live_cancels_.push_back(seq->req.cancel);
    incoming_.push_back(std::move(seq));
    stats_.waiting++;
  }
  wake_.notify_all();
}

void Scheduler::run_exclusive(const std::function<void()>& fn) {
  std::exception_ptr error;
  bool done = false;
  std::function<void()> job = [&] {
    try {
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  };
  std::unique_lock<std::mutex> lock(mutex_);
  if (stopping_) throw Error(ErrorCode::kDisposed, "the model was disposed; load it again with loadModel()");
  std::condition_variable finished;
  std::function<void()> wrapped = [&] {
    job();
    std::lock_guard<std::mutex> l(mutex_);
    done = true;
    finished.notify_all();
  };
  exclusive_.push_back(&wrapped);
  wake_.notify_all();
  finished.wait(lock, [&] { return done; });
  lock.unlock();
  if (error) std::rethrow_exception(error);
}

Scheduler::TempBlocks::~TempBlocks() {
  for (int32_t b : table) cache->release(b);
}

std::unique_ptr<Scheduler::TempBlocks> Scheduler::temp_blocks(int64_t n) {
  auto t = std::make_unique<TempBlocks>();
  t->cache = cache_;
  const int64_t need = (n + B - 1) / B;
  if (cache_->available() - cache_->reserved() < need)
    throw Error(ErrorCode::kContextOverflow, "the KV cache budget cannot hold " + std::to_string(n) +
                                                 " positions next to the running requests: raise kvCacheBytes");
  for (int64_t i = 0; i < need; ++i) t->table.push_back(cache_->allocate());
  return t;
}

void Scheduler::clear_cache() {
  run_exclusive([this] {
    if (cache_) cache_->drop_cached();
    media_cache_->clear();
    legacy_keys_.clear();
    refresh_stats();
  });
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

// ---- engine thread ----

void Scheduler::loop() {
  for (;;) {
    std::vector<std::function<void()>*> exclusive;
    std::vector<int32_t> closing;
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !incoming_.empty() || !exclusive_.empty() || !closing_blocks_.empty() ||
               !active_.empty() || (!waiting_.empty() && static_cast<int>(active_.size()) < options_.max_sequences);
      });
      while (!incoming_.empty()) {
        waiting_.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      exclusive.swap(exclusive_);
      closing.swap(closing_blocks_);
      stopping = stopping_;
    }
    for (int32_t b : closing) cache_->release(b);
    if (stopping) {
      const auto disposed = std::make_exception_ptr(Error(ErrorCode::kDisposed, "the model was disposed"));
      while (!active_.empty()) finish(*active_.front(), "cancelled", disposed);
      for (auto& s : waiting_) {
        if (s->req.on_done) s->req.on_done(GenerateResult(), disposed);
      }
      waiting_.clear();
      deferred_.insert(deferred_.end(), exclusive.begin(), exclusive.end());
      for (auto* job : deferred_) (*job)();  // they see the disposed state and fail or finish quickly
      return;
    }
    // On the legacy runner an exclusive job would overwrite the running sequence's cache: it waits for that
    // sequence to end, and no new one starts meanwhile.
    deferred_.insert(deferred_.end(), exclusive.begin(), exclusive.end());
    if (!legacy_ || active_.empty()) {
      for (auto* job : deferred_) (*job)();
      deferred_.clear();
    }
    try {
      step();
    } catch (...) {
      // A failure outside any one sequence's work (e.g. out of memory in a batched decode): end them all.
      const auto error = std::current_exception();
      while (!active_.empty()) finish(*active_.front(), "cancelled", error);
    }
    refresh_stats();
  }
}

void Scheduler::refresh_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  active_count_ = active_.size();
  stats_.active = static_cast<int64_t>(active_.size());
  stats_.waiting = static_cast<int64_t>(waiting_.size() + incoming_.size());
  if (cache_) {
    stats_.kv_blocks_in_use = cache_->blocks_in_use();
    stats_.kv_blocks_cached = cache_->blocks_cached();
    stats_.kv_blocks_capacity = cache_->capacity();
    stats_.kv_block_bytes = static_cast<int64_t>(cache_->block_bytes());
    stats_.kv_bytes_resident = cache_->blocks_touched() * static_cast<int64_t>(cache_->block_bytes());
  }
  stats_.media_cache_bytes = static_cast<int64_t>(media_cache_->bytes());
}

void Scheduler::step() {
  // Cancelled sequences leave first.
  for (auto it = active_.begin(); it != active_.end();) {
    Sequence& s = **it++;
    if (s.req.cancel && s.req.cancel->is_cancelled()) finish(s, "cancelled");
  }
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    Sequence& s = **it;
    if (s.req.cancel && s.req.cancel->is_cancelled()) {
      s.result.finish_reason = "cancelled";
      s.result.prompt_tokens = s.n;
      if (s.req.on_done) s.req.on_done(std::move(s.result), nullptr);
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  // Admission, first come first served.
  while (!waiting_.empty() && static_cast<int>(active_.size()) < options_.max_sequences && deferred_.empty()) {
    Sequence& s = *waiting_.front();
    bool ok = false;
    try {
      ok = admit(s);
    } catch (...) {
      s.result.prompt_tokens = s.n;
      if (s.req.on_done) s.req.on_done(GenerateResult(), std::current_exception());
      waiting_.pop_front();
      continue;
    }
    if (!ok) {
      if (!s.deferred) {
        s.deferred = true;
        std::lock_guard<std::mutex> lock(mutex_);
        stats_.requests_deferred++;
      }
      break;
    }
    active_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  if (active_.empty()) return;
  // One unit of prompt work for the oldest sequence still reading its prompt; the generating sequences' decode
  // steps run inside it (interleave_decode) and once more after it.
  for (auto& sp : active_) {
    if (sp->phase != Phase::kPrompt) continue;
    Sequence& s = *sp;
    try {
      if (legacy_) legacy_run(s);
      else prompt_unit(s);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kCancelled) finish(s, "cancelled");
      else finish(s, "cancelled", std::current_exception());
    } catch (...) {
      finish(s, "cancelled", std::current_exception());
    }
    break;
  }
  std::vector<Sequence*> decoding;  // collected after the unit: sequences may have ended inside it
  bool prompts_left = !waiting_.empty();
  for (auto& s : active_) {
    if (s->phase == Phase::kDecode) decoding.push_back(s.get());
    if (s->phase == Phase::kPrompt) prompts_left = true;
  }
  // With prompt work left, a decode step only when its share of the time is due.
  if (!decoding.empty() && (!prompts_left || Clock::now() >= next_interleave_)) decode_step(decoding);
}

double Scheduler::default_decode_share() {
  const char* e = std::getenv("PLM_DECODE_SHARE");
  if (!e || !*e) return 0.5;
  char* end = nullptr;
  const double v = std::strtod(e, &end);
  if (end == e || *end != '\0' || !(v >= 0 && v <= 1)) {
    std::fprintf(stderr, "perception-lm: PLM_DECODE_SHARE=%s is not a number from 0 to 1; using 0.5\n", e);
    return 0.5;
  }
  return v;
}

void Scheduler::interleave_decode(const Sequence* current) {
  // Inside another sequence's long prompt unit (between layers or ViT blocks), a decode step runs at most as often
  // as decode steps take: the streaming sequences keep about half their speed and the new prompt about half its,
  // instead of every token waiting for a whole chunk or tile.
  if (Clock::now() < next_interleave_) return;
  std::vector<Sequence*> decoding;
  for (auto& s : active_)
    if (s.get() != current && s->phase == Phase::kDecode) decoding.push_back(s.get());
  if (decoding.empty()) return;
  try {
    decode_step(decoding);
  } catch (...) {
    // Their failure, not the prompt's: end the decoding sequences and let the unit go on.
    const auto error = std::current_exception();
    for (Sequence* s : decoding)
      for (auto& a : active_)
        if (a.get() == s) {
          finish(*s, "cancelled", error);
          break;
        }
  }
}

bool Scheduler::admit(Sequence& s) {
  const GenerateOptions& o = s.req.options;
  s.admitted = Clock::now();
  s.result.queue_ms = ms_between(s.submitted, s.admitted);
  s.result.prompt_tokens = s.n;
  // Keys of the prompt positions; media hashes first.
  for (MediaItem& m : s.req.media)
    if (m.hash == Hash128{}) m.hash = hash_bytes(m.pixels->data(), m.pixels->size() * sizeof(float));
  s.keys.resize(static_cast<size_t>(s.n));
  for (int64_t i = 0; i < s.n; ++i)
    s.keys[i] = s.item_of[i] >= 0 ? media_row_key(s.req.media[s.item_of[i]].hash, s.row_of[i])
                                  : text_token_key(s.req.ids[i]);
  Session* session = s.req.session.get();
  if (session && session->busy_)
    throw Error(ErrorCode::kInvalidArgument, "this chat is already answering; wait for the answer before sending more");
  int64_t reuse = 0;
  if (legacy_) {
    // One sequence at a time on the runner's own cache: legacy_run reuses its prefix.
  } else if (session && !session->keys_.empty()) {
    // The conversation so far: reuse the longest common prefix (at least one position left to compute).
    const auto& k = session->keys_;
    while (reuse < static_cast<int64_t>(k.size()) && reuse < s.n - 1 && k[reuse] == s.keys[reuse]) ++reuse;
    const int64_t keep = (reuse + B - 1) / B;
    for (size_t b = static_cast<size_t>(keep); b < session->blocks_.size(); ++b) cache_->release(session->blocks_[b]);
    session->blocks_.resize(static_cast<size_t>(keep));
    session->keys_.resize(static_cast<size_t>(reuse));
    session->length_ = reuse;
  }
  // Blocks: those reused, and the rest promised up front so the sequence can never run out mid-way.
  const int64_t total = (s.n + o.max_tokens - 1 + B - 1) / B;
  std::vector<int32_t> table;
  std::vector<BlockHash> chain;
  if (!legacy_) {
    if (session && !session->blocks_.empty()) {
      table = session->blocks_;
    } else {
      BlockHash h;
      for (int64_t b = 0; (b + 1) * B <= s.n - 1; ++b) {
        h = KvCache::block_hash(h, s.keys.data() + b * B, B);
        const int32_t blk = cache_->lookup(h);
        if (blk < 0) break;
        table.push_back(blk);
        chain.push_back(h);
      }
      reuse = static_cast<int64_t>(table.size()) * B;
    }
    const bool cow = reuse % B != 0 && !table.empty() &&
                     (cache_->ref_count(table.back()) > 1 || cache_->published(table.back()));
    const int64_t need = total - static_cast<int64_t>(table.size()) + (cow ? 1 : 0);
    if (cache_->available() - cache_->reserved() < need) {
      const bool stuck = active_.empty();
      if (!(session && !session->blocks_.empty()))
        for (int32_t b : table) cache_->release(b);
      if (stuck)
        throw Error(ErrorCode::kContextOverflow,
                    "the KV cache budget has no room for this request: open chats hold " +
                        std::to_string(cache_->blocks_in_use()) + " of its " + std::to_string(cache_->capacity()) +
                        " blocks. Dispose chats you no longer need, or raise kvCacheBytes.");
      return false;
    }
    if (session) {
      session->blocks_.clear();  // the sequence holds the references now; end_session_turn returns them
      session->keys_.clear();
    }
    if (cow) {
      const int32_t fresh = cache_->allocate();
      cache_->copy_rows(table.back(), fresh, reuse % B);
      cache_->release(table.back());
      table.back() = fresh;
    }
    cache_->reserve(total - static_cast<int64_t>(table.size()));
    s.reserved = total - static_cast<int64_t>(table.size());
    // Hashes of reused full blocks (session blocks were published when they filled, or their hash recomputed).
    for (int64_t b = static_cast<int64_t>(chain.size()); (b + 1) * B <= reuse; ++b)
      chain.push_back(KvCache::block_hash(b ? chain.back() : BlockHash{}, s.keys.data() + b * B, B));
    s.table = std::move(table);
    s.chain = std::move(chain);
    s.length = reuse;
    s.published = reuse / B;
  }
  if (session) session->busy_ = true;
  s.result.cached_tokens = reuse;
  // Media: features from the cache, else encoded by prompt units; none for items wholly in the reused prefix.
  s.media.resize(s.req.media.size());
  for (auto& m : s.media) m.needed = false;
  for (int64_t i = reuse; i < s.n; ++i)
    if (s.item_of[i] >= 0) s.media[s.item_of[i]].needed = true;
  for (size_t i = 0; i < s.media.size(); ++i) {
    MediaState& m = s.media[i];
    if (!m.needed || legacy_) continue;
    m.features = media_cache_->get(s.req.media[i].hash);
    std::lock_guard<std::mutex> lock(mutex_);
    if (m.features) stats_.media_cache_hits++;
  }
  s.history = s.req.ids;
  s.sampler = std::make_unique<Sampler>(o.sampling);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.prompt_tokens += s.n;
    stats_.cached_prompt_tokens += reuse;
  }
  return true;
}

void Scheduler::ensure_blocks(Sequence& s, int64_t positions) {
  while (static_cast<int64_t>(s.table.size()) * B < positions) {
    const int32_t b = cache_->allocate();
    if (b < 0) throw Error(ErrorCode::kInternal, "the KV cache ran out of blocks promised to a sequence");
    s.table.push_back(b);
    if (s.reserved > 0) {
      --s.reserved;
      cache_->unreserve(1);
    }
  }
}

void Scheduler::publish_full_blocks(Sequence& s) {
  while ((s.published + 1) * B <= s.length) {
    const int64_t b = s.published;
    if (static_cast<int64_t>(s.chain.size()) <= b)
      s.chain.push_back(KvCache::block_hash(b ? s.chain[b - 1] : BlockHash{}, s.keys.data() + b * B, B));
    cache_->publish(s.table[b], s.chain[b]);
    ++s.published;
  }
}

void Scheduler::prompt_unit(Sequence& s) {
  const int64_t C = options_.prefill_chunk;
  const int64_t p = s.length, e = std::min(s.n, (p / C + 1) * C);
  const CancelToken* cancel = s.req.cancel.get();
  // The media this chunk reads must be encoded first: one group of tiles per step.
  for (int64_t i = p; i < e; ++i) {
    const int32_t item = s.item_of[i];
    if (item < 0 || s.media[item].features) continue;
    MediaState& m = s.media[item];
    const MediaItem& src = s.req.media[item];
    const int64_t H = model_.config.text.hidden_size, S = model_.config.vision.image_size;
    if (!m.filling) m.filling = std::make_shared<std::vector<float>>(static_cast<size_t>(src.tiles * tokens_per_tile_ * H));
    const int64_t t0 = m.encoded_tiles, g = std::min(options_.vision_tiles_per_step, src.tiles - t0);
    const auto t = Clock::now();
    const auto interleave = [this, &s] { interleave_decode(&s); };
    paged_->encode_tiles(src.pixels->data() + t0 * 3 * S * S, g, m.filling->data() + t0 * tokens_per_tile_ * H, cancel,
                         nullptr, interleave);
    s.result.vision_ms += ms_between(t, Clock::now());
    m.encoded_tiles += g;
    if (m.encoded_tiles == src.tiles) {
      m.features = std::move(m.filling);
      media_cache_->put(src.hash, m.features);
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.media_encoded++;
    }
    return;
  }
  ensure_blocks(s, e);
  const int64_t H = model_.config.text.hidden_size;
  std::vector<const float*> rows(static_cast<size_t>(e - p), nullptr);  // [e - p] feature rows of placeholders
  for (int64_t i = p; i < e; ++i)
    if (s.item_of[i] >= 0) rows[i - p] = s.media[s.item_of[i]].features->data() + int64_t(s.row_of[i]) * H;
  const bool last = e == s.n;
  const auto t = Clock::now();
  // The chunk's logits have their own buffer: decode steps inside it use logits_.
  prefill_logits_.resize(last ? static_cast<size_t>(vocab_) : 0);
  paged_->prefill(s.req.ids.data() + p, rows.data(), e - p, s.table.data(), p, last ? 1 : 0, prefill_logits_.data(),
                  cancel, nullptr, [this, &s] { interleave_decode(&s); });
  s.result.prefill_ms += ms_between(t, Clock::now());
  s.length = e;
  publish_full_blocks(s);
  if (!last) return;
  s.phase = Phase::kDecode;
  for (auto& m : s.media) m = MediaState();  // features no longer needed by this sequence
  take_token(s, prefill_logits_.data());
}

void Scheduler::decode_step(std::vector<Sequence*>& seqs) {
  const int64_t R = static_cast<int64_t>(seqs.size());
  if (legacy_) {
    Sequence& s = *seqs[0];
    const GenerateOptions& o = s.req.options;
    const bool device = legacy_->samples_on_device() && o.sampling.repetition_penalty == 1.f && !o.keep_logits &&
                        o.top_logprobs < 0 && !o.allowed_tokens;
    try {
      if (device) {
        const int32_t token =
            legacy_->decode_step(s.next_token, o.sampling, static_cast<uint64_t>(s.result.tokens.size()), nullptr);
        ++s.length;
        legacy_keys_.push_back(text_token_key(s.next_token));
        accept_token(s, token, nullptr);
        return;
      }
      ForwardRequest req;
      req.ids = &s.next_token;
      req.n = 1;
      req.logits_rows = 1;
      logits_.resize(static_cast<size_t>(vocab_));
      req.logits_out = logits_.data();
      legacy_->forward(req, s.req.cancel.get());
      ++s.length;
      legacy_keys_.push_back(text_token_key(s.next_token));
    } catch (const Error& e) {
      legacy_keys_.clear();
      if (e.code() == ErrorCode::kCancelled) finish(s, "cancelled");
      else finish(s, "cancelled", std::current_exception());
      return;
    }
    take_token(s, logits_.data());
    return;
  }
  std::vector<int32_t> ids(static_cast<size_t>(R));
  std::vector<const int32_t*> tables(static_cast<size_t>(R));
  std::vector<int64_t> pos(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    Sequence& s = *seqs[r];
    ensure_blocks(s, s.length + 1);
    ids[r] = s.next_token;
    tables[r] = s.table.data();
    pos[r] = s.length;
  }
  logits_.resize(static_cast<size_t>(R * vocab_));
  const auto t0 = Clock::now();
  paged_->decode(ids.data(), R, tables.data(), pos.data(), logits_.data());
  const auto t1 = Clock::now();
  // The next decode step is due once prompt work has had (1 - share) / share of this step's time.
  const double share = options_.decode_share;
  next_interleave_ = share >= 1 ? t1
                     : share <= 0 ? Clock::time_point::max()
                                  : t1 + std::chrono::duration_cast<Clock::duration>((t1 - t0) * ((1 - share) / share));
  for (int64_t r = 0; r < R; ++r) {
    Sequence& s = *seqs[r];
    ++s.length;
    publish_full_blocks(s);
    take_token(s, logits_.data() + r * vocab_);
  }
}

void Scheduler::legacy_run(Sequence& s) {
  // The runner's cache keeps what the previous sequence left: reuse the common prefix, but recompute from the
  // first placeholder on when an image must be encoded (the runner takes features in placeholder order).
  int64_t reuse = 0;
  while (reuse < static_cast<int64_t>(legacy_keys_.size()) && reuse < s.n - 1 && legacy_keys_[reuse] == s.keys[reuse])
    ++reuse;
  int64_t first_placeholder = s.n;
  for (int64_t i = 0; i < s.n; ++i)
    if (s.item_of[i] >= 0) {
      first_placeholder = i;
      break;
    }
  bool media_needed = false;
  for (int64_t i = reuse; i < s.n && !media_needed; ++i) media_needed = s.item_of[i] >= 0;
  if (media_needed) reuse = std::min(reuse, first_placeholder);
  s.result.cached_tokens = reuse;
  legacy_->truncate(reuse);
  legacy_keys_.resize(static_cast<size_t>(reuse));
  const CancelToken* cancel = s.req.cancel.get();
  try {
    if (media_needed) {
      std::vector<float> pixels;
      int64_t tiles = 0;
      for (const MediaItem& m : s.req.media) {
        pixels.insert(pixels.end(), m.pixels->begin(), m.pixels->end());
        tiles += m.tiles;
      }
      const auto t = Clock::now();
      legacy_->encode_images(pixels.data(), tiles, nullptr, cancel);
      s.result.vision_ms += ms_between(t, Clock::now());
    }
    ForwardRequest req;
    req.ids = s.req.ids.data() + reuse;
    req.n = s.n - reuse;
    req.use_features = media_needed;
    req.logits_rows = 1;
    logits_.resize(static_cast<size_t>(vocab_));
    req.logits_out = logits_.data();
    const auto t = Clock::now();
    legacy_->forward(req, cancel);
    s.result.prefill_ms += ms_between(t, Clock::now());
  } catch (...) {
    legacy_keys_.clear();
    throw;
  }
  legacy_keys_.assign(s.keys.begin(), s.keys.begin() + s.n);
  s.length = s.n;
  s.phase = Phase::kDecode;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.cached_prompt_tokens += reuse;
  }
  take_token(s, logits_.data());
}

bool Scheduler::take_token(Sequence& s, float* logits) {
  const GenerateOptions& o = s.req.options;
  const int64_t step = static_cast<int64_t>(s.result.tokens.size());
  if (o.allowed_tokens) {
    const uint8_t* mask = o.allowed_tokens(step);
    if (mask && Sampler::apply_mask(logits, vocab_, mask) == 0) {
      finish(s, "stop", std::make_exception_ptr(Error(ErrorCode::kInvalidArgument,
                                                      "the output constraint allows no token at step " +
                                                          std::to_string(step))));
      return false;
    }
  }
  if (o.keep_logits) s.result.logits.insert(s.result.logits.end(), logits, logits + vocab_);
  const int32_t token = s.sampler->sample(logits, vocab_, s.history, static_cast<uint64_t>(step));
  TokenLogprobs lp;
  if (o.top_logprobs >= 0)
    Sampler::logprobs(logits, vocab_, o.sampling.temperature, token, o.top_logprobs, &lp.logprob, &lp.top);
  return accept_token(s, token, o.top_logprobs >= 0 ? &lp : nullptr);
}

bool Scheduler::accept_token(Sequence& s, int32_t token, const TokenLogprobs* lp) {
  const GenerateOptions& o = s.req.options;
  refresh_stats();  // a caller reading stats() on this token sees the blocks that produced it
  if (s.result.tokens.empty()) {
    s.first_token = Clock::now();
    s.result.first_token_ms = ms_between(s.submitted, s.first_token);
  }
  if (lp) s.result.logprobs.push_back(*lp);
  s.result.tokens.push_back(token);
  s.history.push_back(token);
  s.keys.push_back(text_token_key(token));
  const std::vector<int32_t>& stops = o.stop_ids.empty() ? model_.generation.eos_token_ids : o.stop_ids;
  const bool is_stop = std::find(stops.begin(), stops.end(), token) != stops.end();
  const bool keep_going = o.on_token ? o.on_token(token, lp) : true;
  const bool cancelled = s.req.cancel && s.req.cancel->is_cancelled();
  if (is_stop) finish(s, "stop");
  else if (!keep_going) finish(s, cancelled ? "cancelled" : "stop");
  else if (static_cast<int64_t>(s.result.tokens.size()) >= o.max_tokens || s.length + 1 > options_.max_context)
    finish(s, "length");
  else {
    s.next_token = token;
    return true;
  }
  return false;
}

void Scheduler::end_session_turn(Sequence& s) {
  Session* session = s.req.session.get();
  session->keys_.assign(s.keys.begin(), s.keys.begin() + std::min<int64_t>(s.length, s.keys.size()));
  session->blocks_ = std::move(s.table);
  s.table.clear();
  // Blocks past the last written position carry nothing: give them back.
  const int64_t keep = (s.length + B - 1) / B;
  while (static_cast<int64_t>(session->blocks_.size()) > keep) {
    cache_->release(session->blocks_.back());
    session->blocks_.pop_back();
  }
  session->length_ = static_cast<int64_t>(session->keys_.size());
  session->busy_ = false;
}

void Scheduler::finish(Sequence& s, const std::string& reason, std::exception_ptr error) {
  s.result.finish_reason = reason;
  if (!s.result.tokens.empty()) s.result.decode_ms = ms_between(s.first_token, Clock::now());
  if (cache_) {
    cache_->unreserve(s.reserved);
    s.reserved = 0;
    if (s.req.session) end_session_turn(s);
    for (int32_t b : s.table) cache_->release(b);
    s.table.clear();
  } else if (s.req.session) {
    s.req.session->busy_ = false;
  }
  auto done = std::move(s.req.on_done);
  GenerateResult result = error ? GenerateResult() : std::move(s.result);
  // Remove it from the active list (it may not be there: a failure at admission). The counters are current
  // before the caller hears of the end.
  for (auto it = active_.begin(); it != active_.end(); ++it)
    if (it->get() == &s) {
      std::unique_ptr<Sequence> keep = std::move(*it);
      active_.erase(it);
      refresh_stats();
      if (done) done(std::move(result), error);
      return;
    }
  refresh_stats();
  if (done) done(std::move(result), error);
}

}  // namespace plm
