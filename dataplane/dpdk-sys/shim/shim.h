/* Conveyor's C shim over DPDK: the `static inline` fast path (bursts, mbuf access) as real
 * functions, and port and pool setup with DPDK's structs kept on this side. Rust sees only
 * scalars and opaque pointers. */
#ifndef CONVEYOR_DPDK_SHIM_H
#define CONVEYOR_DPDK_SHIM_H

#include <stddef.h>
#include <stdint.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* Port counters (rte_eth_stats), in this order. */
enum {
	CV_STAT_IPACKETS,
	CV_STAT_OPACKETS,
	CV_STAT_IMISSED,
	CV_STAT_IERRORS,
	CV_STAT_OERRORS,
	CV_STAT_RX_NOMBUF,
	CV_STATS,
};

/* Port facts: MAC address, MTU, driver name. */
struct cv_port_info {
	uint8_t mac[6];
	uint16_t mtu;
	char driver[64];
	char name[64];
};

int cv_errno(void);
uint16_t cv_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t cv_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
int cv_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n);
void cv_pktmbuf_free(struct rte_mbuf *m);
uint8_t *cv_mbuf_data(struct rte_mbuf *m);
uint16_t cv_mbuf_data_len(const struct rte_mbuf *m);
uint32_t cv_mbuf_pkt_len(const struct rte_mbuf *m);
/* Sets a fresh mbuf's length to `len` (one segment); returns its data, or NULL if it does not
 * fit. */
uint8_t *cv_mbuf_set_len(struct rte_mbuf *m, uint16_t len);

struct rte_mempool *cv_pool_create(const char *name, unsigned n, uint16_t data_room);
/* Configures one rx and one tx queue, sets them up with `nrxd`/`ntxd` descriptors, starts the
 * port. On failure returns a negative errno and writes the failing step into `err`. */
int cv_port_start(uint16_t port, struct rte_mempool *mp, uint16_t nrxd, uint16_t ntxd, char *err,
		  size_t errlen);
int cv_port_info(uint16_t port, struct cv_port_info *info);
int cv_port_stats(uint16_t port, uint64_t out[CV_STATS]);
/* Two ring ports wired to each other (a's tx is b's rx and back), named `a` and `b`: a link
 * inside one process, for tests. */
int cv_ring_link(const char *a, const char *b, uint16_t *port_a, uint16_t *port_b);

#endif
