/*
 * copy-engine's C shim over DPDK's EAL and dmadev.
 *
 * dmadev's data-path calls are `static inline` in rte_dmadev.h, so Rust cannot call them
 * directly: each gets an exported wrapper here. Control-path calls take and return the small flat
 * structs defined below (prefix `ce_`), so the Rust side never depends on DPDK's own struct
 * layouts. rte_errno is a per-lcore thread-local macro; it is read here (ce_errno).
 *
 * The Rust declarations of everything here are in src/lib.rs; keep both in step.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <rte_dmadev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_vfio.h>

/* The constants the Rust side mirrors; a build against a DPDK that moved them fails here. */
_Static_assert(RTE_DMA_CAPA_MEM_TO_MEM == (1ULL << 0), "RTE_DMA_CAPA_MEM_TO_MEM moved");
_Static_assert(RTE_DMA_CAPA_SVA == (1ULL << 4), "RTE_DMA_CAPA_SVA moved");
_Static_assert(RTE_DMA_CAPA_SILENT == (1ULL << 5), "RTE_DMA_CAPA_SILENT moved");
_Static_assert(RTE_DMA_CAPA_HANDLES_ERRORS == (1ULL << 6), "RTE_DMA_CAPA_HANDLES_ERRORS moved");
_Static_assert(RTE_DMA_CAPA_OPS_COPY == (1ULL << 32), "RTE_DMA_CAPA_OPS_COPY moved");
_Static_assert(RTE_DMA_CAPA_OPS_FILL == (1ULL << 34), "RTE_DMA_CAPA_OPS_FILL moved");
_Static_assert(RTE_DMA_OP_FLAG_FENCE == (1ULL << 0), "RTE_DMA_OP_FLAG_FENCE moved");
_Static_assert(RTE_DMA_OP_FLAG_SUBMIT == (1ULL << 1), "RTE_DMA_OP_FLAG_SUBMIT moved");
_Static_assert(RTE_DMA_OP_FLAG_LLC == (1ULL << 2), "RTE_DMA_OP_FLAG_LLC moved");
_Static_assert(RTE_DMA_STATUS_SUCCESSFUL == 0, "status codes moved");
_Static_assert(RTE_DMA_STATUS_PAGE_FAULT == 14, "status codes moved");
_Static_assert(RTE_DMA_STATUS_ERROR_UNKNOWN == 0x100, "status codes moved");
_Static_assert(sizeof(enum rte_dma_status_code) == sizeof(uint32_t), "status code is not 32-bit");

#define CE_NAME_LEN 64

/* What the Rust side needs of struct rte_dma_info, plus whether completed_status exists. */
struct ce_dma_info {
	uint64_t capa;
	uint16_t max_vchans;
	uint16_t max_desc;
	uint16_t min_desc;
	uint16_t nb_vchans;
	int16_t numa_node;
	uint8_t has_completed_status;
	uint8_t pad;
	char name[CE_NAME_LEN];
};

struct ce_dma_stats {
	uint64_t submitted;
	uint64_t completed;
	uint64_t errors;
};

/* ---- EAL ---- */

int ce_eal_init(int argc, char **argv) { return rte_eal_init(argc, argv); }
int ce_eal_cleanup(void) { return rte_eal_cleanup(); }
int ce_errno(void) { return rte_errno; }
const char *ce_strerror(int code) { return rte_strerror(code); }
int ce_eal_iova_is_va(void) { return rte_eal_iova_mode() == RTE_IOVA_VA; }

int ce_vfio_dma_map(uint64_t va, uint64_t iova, uint64_t len)
{
	return rte_vfio_container_dma_map(RTE_VFIO_DEFAULT_CONTAINER_FD, va, iova, len);
}

int ce_vfio_dma_unmap(uint64_t va, uint64_t iova, uint64_t len)
{
	return rte_vfio_container_dma_unmap(RTE_VFIO_DEFAULT_CONTAINER_FD, va, iova, len);
}

/* ---- dmadev control path ---- */

uint16_t ce_dma_count(void) { return rte_dma_count_avail(); }

/* The first valid device id >= start, or -1. */
int16_t ce_dma_next(int16_t start) { return rte_dma_next_dev(start); }

int ce_dma_id_by_name(const char *name) { return rte_dma_get_dev_id_by_name(name); }

int ce_dma_info(int16_t dev, struct ce_dma_info *out)
{
	struct rte_dma_info info;
	int rc;

	memset(out, 0, sizeof(*out));
	memset(&info, 0, sizeof(info));
	rc = rte_dma_info_get(dev, &info);
	if (rc < 0)
		return rc;
	out->capa = info.dev_capa;
	out->max_vchans = info.max_vchans;
	out->max_desc = info.max_desc;
	out->min_desc = info.min_desc;
	out->nb_vchans = info.nb_vchans;
	out->numa_node = info.numa_node;
	out->has_completed_status = rte_dma_fp_objs[dev].completed_status != NULL;
	if (info.dev_name != NULL) {
		strncpy(out->name, info.dev_name, CE_NAME_LEN - 1);
		out->name[CE_NAME_LEN - 1] = '\0';
	}
	return 0;
}

int ce_dma_configure(int16_t dev, uint16_t nb_vchans)
{
	struct rte_dma_conf conf;

	memset(&conf, 0, sizeof(conf));
	conf.nb_vchans = nb_vchans;
	conf.enable_silent = false;
	return rte_dma_configure(dev, &conf);
}

int ce_dma_vchan_setup(int16_t dev, uint16_t vchan, uint16_t nb_desc)
{
	struct rte_dma_vchan_conf conf;

	memset(&conf, 0, sizeof(conf));
	conf.direction = RTE_DMA_DIR_MEM_TO_MEM;
	conf.nb_desc = nb_desc;
	return rte_dma_vchan_setup(dev, vchan, &conf);
}

int ce_dma_start(int16_t dev) { return rte_dma_start(dev); }
int ce_dma_stop(int16_t dev) { return rte_dma_stop(dev); }
int ce_dma_close(int16_t dev) { return rte_dma_close(dev); }

int ce_dma_stats_get(int16_t dev, uint16_t vchan, struct ce_dma_stats *out)
{
	struct rte_dma_stats st;
	int rc;

	memset(&st, 0, sizeof(st));
	rc = rte_dma_stats_get(dev, vchan, &st);
	out->submitted = st.submitted;
	out->completed = st.completed;
	out->errors = st.errors;
	return rc;
}

int ce_dma_stats_reset(int16_t dev, uint16_t vchan) { return rte_dma_stats_reset(dev, vchan); }

/* ---- dmadev data path ---- */

int ce_dma_copy(int16_t dev, uint16_t vchan, uint64_t src, uint64_t dst, uint32_t len, uint64_t flags)
{
	return rte_dma_copy(dev, vchan, src, dst, len, flags);
}

/*
 * Enqueues up to n copies (src[i] -> dst[i], len[i] bytes, each with `flags`), stopping at the
 * first refusal; rings the doorbell once after them when `submit` is set and any was enqueued.
 * Returns how many were enqueued; *first_idx gets the ring index of the first one and *err the
 * refusal's (negative) code, or 0.
 */
uint16_t ce_dma_copy_burst(int16_t dev, uint16_t vchan, const uint64_t *src, const uint64_t *dst,
			   const uint32_t *len, uint16_t n, uint64_t flags, int submit,
			   uint16_t *first_idx, int *err)
{
	uint16_t i;

	*err = 0;
	for (i = 0; i < n; i++) {
		int rc = rte_dma_copy(dev, vchan, src[i], dst[i], len[i], flags);

		if (rc < 0) {
			*err = rc;
			break;
		}
		if (i == 0)
			*first_idx = (uint16_t)rc;
	}
	if (submit && i > 0)
		rte_dma_submit(dev, vchan);
	return i;
}

int ce_dma_submit(int16_t dev, uint16_t vchan) { return rte_dma_submit(dev, vchan); }

uint16_t ce_dma_completed(int16_t dev, uint16_t vchan, uint16_t n, uint16_t *last_idx, uint8_t *has_error)
{
	bool err = false;
	uint16_t done = rte_dma_completed(dev, vchan, n, last_idx, &err);

	*has_error = err;
	return done;
}

uint16_t ce_dma_completed_status(int16_t dev, uint16_t vchan, uint16_t n, uint16_t *last_idx,
				 uint32_t *status)
{
	return rte_dma_completed_status(dev, vchan, n, last_idx, (enum rte_dma_status_code *)status);
}

uint16_t ce_dma_burst_capacity(int16_t dev, uint16_t vchan) { return rte_dma_burst_capacity(dev, vchan); }

/* Polls until every op enqueued on the channel has completed, failed ones included. */
static void ce_drain(int16_t dev, uint16_t vchan, uint64_t outstanding)
{
	enum rte_dma_status_code st[64];
	uint16_t last;

	rte_dma_submit(dev, vchan);
	while (outstanding > 0)
		outstanding -= rte_dma_completed_status(dev, vchan, 64, &last, st);
}

/*
 * Benchmark baseline: n copies of `size` bytes from src to dst (IOVAs), enqueued in bursts of
 * `burst` with one doorbell per burst, completions polled after every burst, until all n are
 * done. Returns n, or a negative error code (-EIO when the device reports a failed copy); on an
 * error, every op already enqueued has completed before it returns.
 */
int64_t ce_bench_copy_loop(int16_t dev, uint16_t vchan, uint64_t src, uint64_t dst, uint32_t size,
			   uint64_t n, uint16_t burst)
{
	uint64_t enqueued = 0, done = 0;

	if (burst == 0 || size == 0)
		return -EINVAL;
	while (done < n) {
		uint16_t b = 0, last;
		bool err = false;

		while (b < burst && enqueued < n) {
			int rc = rte_dma_copy(dev, vchan, src, dst, size, 0);

			if (rc == -ENOSPC)
				break;
			if (rc < 0) {
				ce_drain(dev, vchan, enqueued - done);
				return rc;
			}
			enqueued++;
			b++;
		}
		if (b > 0)
			rte_dma_submit(dev, vchan);
		done += rte_dma_completed(dev, vchan, UINT16_MAX, &last, &err);
		if (err) {
			ce_drain(dev, vchan, enqueued - done);
			return -EIO;
		}
	}
	return (int64_t)done;
}
