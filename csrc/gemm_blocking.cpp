// Cache detection and the packed GEMM's blocking table (gemm/blocking.h). Baseline ISA only.
#include <cpuid.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>

#include "gemm/blocking.h"
#include "kernels.h"

namespace pyconv {

namespace {

// What the compile-time blocks (gemm/tile.h) were tuned on: 32 KiB 8-way L1d, 1 MiB L2 per core,
// an L3 of 32 MiB shared by 16 cores.
constexpr CpuCaches kCompiledInCaches{32 << 10, 8, 1 << 20, 1, 32 << 20, 16, 64, 1, "compiled-in"};

// "48K", "1024K", "2M", "32MiB", "64" -> bytes; -1 when malformed.
int64_t parse_size(std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    size_t digits = 0;
    while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits]))) ++digits;
    if (digits == 0 || digits > 15) return -1;
    int64_t value = std::stoll(s.substr(0, digits));
    std::string unit = s.substr(digits);
    for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (unit.empty() || unit == "B") return value;
    const int64_t scale = unit[0] == 'K' ? 1 << 10 : unit[0] == 'M' ? 1 << 20 : unit[0] == 'G' ? 1 << 30 : 0;
    const std::string rest = unit.substr(1);
    if (scale == 0 || !(rest.empty() || rest == "B" || rest == "IB")) return -1;
    return value * scale;
}

// "12" -> 12; -1 when not a plain decimal number.
int64_t parse_count(const std::string& s) {
    if (s.empty() || s.size() > 15 || s.find_first_not_of("0123456789") != std::string::npos) return -1;
    return std::stoll(s);
}

// The number of CPUs in a list such as "0-3,8,10-11"; 0 when malformed.
int64_t count_cpu_list(const std::string& list) {
    int64_t count = 0;
    size_t pos = 0;
    while (pos < list.size()) {
        size_t end = list.find(',', pos);
        if (end == std::string::npos) end = list.size();
        const std::string item = list.substr(pos, end - pos);
        const size_t dash = item.find('-');
        const int64_t first = parse_count(item.substr(0, dash));
        const int64_t last = dash == std::string::npos ? first : parse_count(item.substr(dash + 1));
        if (first < 0 || last < first) return 0;
        count += last - first + 1;
        pos = end + 1;
    }
    return count;
}

bool read_line(const std::string& path, std::string& out) {
    std::ifstream in(path);
    return static_cast<bool>(std::getline(in, out));
}

CpuCaches sysfs_caches(const std::string& cpu_dir) {
    CpuCaches c{0, 0, 0, 1, 0, 1, 0, 0, "sysfs"};
    for (int index = 0; index < 16; ++index) {
        const std::string dir = cpu_dir + "/cpu0/cache/index" + std::to_string(index) + "/";
        std::string level, type, size, ways, line, shared;
        if (!read_line(dir + "level", level) || !read_line(dir + "type", type) ||
            !read_line(dir + "size", size))
            continue;
        if (type != "Data" && type != "Unified") continue;
        const int64_t bytes = parse_size(size);
        if (bytes <= 0) continue;
        const int64_t sharing = read_line(dir + "shared_cpu_list", shared) ? count_cpu_list(shared) : 0;
        if (level == "1") {
            c.l1d = bytes;
            if (read_line(dir + "ways_of_associativity", ways)) c.l1d_ways = std::max<int64_t>(0, parse_count(ways));
            if (read_line(dir + "coherency_line_size", line)) c.line = std::max<int64_t>(0, parse_count(line));
        } else if (level == "2") {
            c.l2 = bytes;
            c.l2_shared_by = std::max<int64_t>(1, sharing);
        } else if (level == "3") {
            c.l3 = bytes;
            c.l3_shared_by = std::max<int64_t>(1, sharing);
        }
    }
    return c;
}

CpuCaches cpuid_caches() {
    CpuCaches c{0, 0, 0, 1, 0, 1, 0, 0, "cpuid"};
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return c;
    const bool amd = ebx == 0x68747541;  // "Auth"enticAMD: the same layout at leaf 0x8000001D
    const unsigned leaf = amd ? 0x8000001Du : 4u;
    if ((amd ? __get_cpuid_max(0x80000000u, nullptr) : eax) < leaf) return c;
    for (unsigned sub = 0; sub < 16; ++sub) {
        __cpuid_count(leaf, sub, eax, ebx, ecx, edx);
        const unsigned type = eax & 0x1f;  // 0 no more caches, 1 data, 2 instruction, 3 unified
        if (type == 0) break;
        if (type == 2) continue;
        const int64_t level = (eax >> 5) & 0x7, sharing = ((eax >> 14) & 0xfff) + 1;
        const int64_t ways = ((ebx >> 22) & 0x3ff) + 1, partitions = ((ebx >> 12) & 0x3ff) + 1;
        const int64_t line = (ebx & 0xfff) + 1, sets = int64_t(ecx) + 1;
        const int64_t bytes = ways * partitions * line * sets;
        if (level == 1) c.l1d = bytes, c.l1d_ways = ways, c.line = line;
        else if (level == 2) c.l2 = bytes, c.l2_shared_by = sharing;
        else if (level == 3) c.l3 = bytes, c.l3_shared_by = sharing;
    }
    return c;
}

// Applies "name=size,..." to `c`; false (and `c` unchanged) when malformed.
bool apply_override(const std::string& spec, CpuCaches& c) {
    CpuCaches out = c;
    size_t pos = 0;
    while (pos < spec.size()) {
        size_t end = spec.find(',', pos);
        if (end == std::string::npos) end = spec.size();
        const std::string item = spec.substr(pos, end - pos);
        const size_t eq = item.find('=');
        if (eq == std::string::npos) return false;
        std::string name = item.substr(0, eq);
        name.erase(0, name.find_first_not_of(' '));
        const int64_t value = parse_size(item.substr(eq + 1));
        if (value <= 0) return false;
        if (name == "l1d") out.l1d = value;
        else if (name == "l1d_ways") out.l1d_ways = value;
        else if (name == "l2") out.l2 = value;
        else if (name == "l2_shared_by") out.l2_shared_by = value;
        else if (name == "l3") out.l3 = value;
        else if (name == "l3_shared_by") out.l3_shared_by = value;
        else if (name == "line") out.line = value;
        else if (name == "cpus") out.cpus = value;
        else return false;
        pos = end + 1;
    }
    c = out;
    return true;
}

int64_t round_down(int64_t value, int64_t unit) { return std::max(unit, value / unit * unit); }
int64_t round_nearest(int64_t value, int64_t unit) { return std::max(unit, (value + unit / 2) / unit * unit); }

}  // namespace

CpuCaches detect_cpu_caches(const char* cpu_dir, const char* override_spec, bool* override_ok) {
    CpuCaches c = sysfs_caches(cpu_dir ? cpu_dir : "");
    if (c.l1d <= 0 || c.l2 <= 0) c = cpuid_caches();
    if (c.l1d <= 0 || c.l2 <= 0) c = kCompiledInCaches;
    c.cpus = std::max<int64_t>(1, sysconf(_SC_NPROCESSORS_ONLN));
    bool ok = true;
    if (override_spec != nullptr && *override_spec != '\0') {
        ok = apply_override(override_spec, c);
        if (ok) c.source = std::strcmp(c.source, "sysfs") == 0   ? "sysfs+PYCONV_CACHE_SIZES"
                           : std::strcmp(c.source, "cpuid") == 0 ? "cpuid+PYCONV_CACHE_SIZES"
                                                                 : "compiled-in+PYCONV_CACHE_SIZES";
    }
    if (override_ok) *override_ok = ok;
    return c;
}

const CpuCaches& cpu_caches() {
    static const CpuCaches caches =
        detect_cpu_caches("/sys/devices/system/cpu", std::getenv("PYCONV_CACHE_SIZES"), nullptr);
    return caches;
}

GemmBlocking model_gemm_blocking(const CpuCaches& c, int mr, int nr, int elem_size) {
    const int64_t S = elem_size;
    const int64_t ways = c.l1d_ways > 1 ? c.l1d_ways : 8;
    const int64_t l2 = c.l2 / std::max<int64_t>(1, c.l2_shared_by);
    const int64_t kc_l1 = round_down(c.l1d * (ways - 1) / ways / ((mr + nr) * S), 8);
    const int64_t kc_l2 = round_down(l2 / 2 / (nr * S), 8);  // the B sliver in half of L2
    const int64_t kc = std::min(kGemmMaxKC, std::max(kc_l1, std::min(kGemmMinModelKC, kc_l2)));
    const int64_t mc = std::min<int64_t>(round_down(l2 / 2 / (kc * S), mr), round_down(4096, mr));
    // Without an L3 the B panel streams from memory: as many columns as the L2 holds.
    const int64_t l3 = c.l3 > 0 ? c.l3 / std::max<int64_t>(1, c.l3_shared_by) : l2;
    const int64_t nc = std::min<int64_t>(round_down(l3 / 2 / (kc * S), nr), round_down(4096, nr));
    return GemmBlocking{kc, mc, nc};
}

GemmBlocking round_gemm_blocking(GemmBlocking b, int mr, int nr) {
    return GemmBlocking{std::clamp<int64_t>(b.kc, 1, kGemmMaxKC), round_nearest(b.mc, mr),
                        round_nearest(b.nc, nr)};
}

namespace {

struct BlockingEntry {
    bool set = false;
    GemmBlocking blocking{};
    const char* source = "";
};

std::mutex g_blocking_mutex;
BlockingEntry g_blocking[3][2];  // [isa level][float, double]

const GemmTileShape& tile_of(int isa, int elem_size) {
    const KernelTable& t = isa == 2 ? table_avx512 : isa == 1 ? table_avx2 : table_generic;
    return elem_size == 4 ? t.f32.gemm_tile : t.f64.gemm_tile;
}

// "kc,mc,nc" -> true and `b`, else false.
bool parse_blocking(const char* spec, GemmBlocking& b) {
    long long kc, mc, nc;
    char tail;
    if (std::sscanf(spec, " %lld , %lld , %lld %c", &kc, &mc, &nc, &tail) != 3) return false;
    if (kc <= 0 || mc <= 0 || nc <= 0) return false;
    b = GemmBlocking{kc, mc, nc};
    return true;
}

BlockingEntry& entry(int isa, int elem_size) {
    BlockingEntry& e = g_blocking[std::clamp(isa, 0, 2)][elem_size == 4 ? 0 : 1];
    if (e.set) return e;
    const GemmTileShape& tile = tile_of(isa, elem_size);
    const char* env = std::getenv("PYCONV_GEMM_BLOCKING");
    GemmBlocking b;
    if (env != nullptr && *env != '\0' && parse_blocking(env, b)) {
        e.blocking = round_gemm_blocking(b, tile.mr, tile.nr);
        e.source = "PYCONV_GEMM_BLOCKING";
    } else {
        const bool malformed = env != nullptr && *env != '\0';
        const CpuCaches& caches = cpu_caches();
        if (std::strcmp(caches.source, "compiled-in") == 0) {
            e.blocking = GemmBlocking{tile.kc, tile.mc, tile.nc};
            e.source = malformed ? "compile-time default (PYCONV_GEMM_BLOCKING malformed, ignored)"
                                 : "compile-time default";
        } else {
            e.blocking = model_gemm_blocking(caches, tile.mr, tile.nr, elem_size);
            e.source = malformed ? "model (PYCONV_GEMM_BLOCKING malformed, ignored)" : "model";
        }
    }
    e.set = true;
    return e;
}

}  // namespace

GemmBlocking gemm_blocking(int isa, int elem_size) {
    std::lock_guard<std::mutex> lock(g_blocking_mutex);
    return entry(isa, elem_size).blocking;
}

const char* gemm_blocking_source(int isa, int elem_size) {
    std::lock_guard<std::mutex> lock(g_blocking_mutex);
    return entry(isa, elem_size).source;
}

GemmBlocking set_gemm_blocking(int isa, int elem_size, GemmBlocking b, const char* source) {
    const GemmTileShape& tile = tile_of(isa, elem_size);
    std::lock_guard<std::mutex> lock(g_blocking_mutex);
    BlockingEntry& e = g_blocking[std::clamp(isa, 0, 2)][elem_size == 4 ? 0 : 1];
    e = BlockingEntry{true, round_gemm_blocking(b, tile.mr, tile.nr), source};
    return e.blocking;
}

void reset_gemm_blocking() {
    std::lock_guard<std::mutex> lock(g_blocking_mutex);
    for (auto& per_isa : g_blocking)
        for (BlockingEntry& e : per_isa) e = BlockingEntry{};
}

}  // namespace pyconv
