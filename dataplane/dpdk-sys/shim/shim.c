#include "shim.h"

#include <stdio.h>
#include <string.h>

#include <rte_eth_ring.h>
#include <rte_ring.h>

int cv_errno(void) { return rte_errno; }

uint16_t cv_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t cv_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

int cv_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, n);
}

void cv_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

uint8_t *cv_mbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }

uint16_t cv_mbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }

uint32_t cv_mbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }

uint8_t *cv_mbuf_set_len(struct rte_mbuf *m, uint16_t len)
{
	rte_pktmbuf_reset(m);
	return (uint8_t *)rte_pktmbuf_append(m, len);
}

struct rte_mempool *cv_pool_create(const char *name, unsigned n, uint16_t data_room)
{
	/* A per-lcore cache only helps EAL threads; the polling thread is not one. */
	return rte_pktmbuf_pool_create(name, n, 0, 0, data_room, rte_socket_id());
}

int cv_port_start(uint16_t port, struct rte_mempool *mp, uint16_t nrxd, uint16_t ntxd, char *err,
		  size_t errlen)
{
	struct rte_eth_conf conf;
	struct rte_eth_dev_info info;
	int r;

	memset(&conf, 0, sizeof(conf));
	r = rte_eth_dev_info_get(port, &info);
	if (r != 0) {
		snprintf(err, errlen, "rte_eth_dev_info_get");
		return r;
	}
	r = rte_eth_dev_configure(port, 1, 1, &conf);
	if (r != 0) {
		snprintf(err, errlen, "rte_eth_dev_configure (1 rx and 1 tx queue)");
		return r;
	}
	r = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nrxd, &ntxd);
	if (r != 0) {
		snprintf(err, errlen, "rte_eth_dev_adjust_nb_rx_tx_desc");
		return r;
	}
	r = rte_eth_rx_queue_setup(port, 0, nrxd, rte_eth_dev_socket_id(port), NULL, mp);
	if (r != 0) {
		snprintf(err, errlen, "rte_eth_rx_queue_setup (%u descriptors)", nrxd);
		return r;
	}
	r = rte_eth_tx_queue_setup(port, 0, ntxd, rte_eth_dev_socket_id(port), NULL);
	if (r != 0) {
		snprintf(err, errlen, "rte_eth_tx_queue_setup (%u descriptors)", ntxd);
		return r;
	}
	r = rte_eth_dev_start(port);
	if (r != 0) {
		snprintf(err, errlen, "rte_eth_dev_start");
		return r;
	}
	return 0;
}

int cv_port_info(uint16_t port, struct cv_port_info *out)
{
	struct rte_ether_addr mac;
	struct rte_eth_dev_info info;
	int r;

	memset(out, 0, sizeof(*out));
	r = rte_eth_macaddr_get(port, &mac);
	if (r != 0)
		return r;
	memcpy(out->mac, mac.addr_bytes, 6);
	r = rte_eth_dev_get_mtu(port, &out->mtu);
	if (r != 0)
		out->mtu = 1500;
	r = rte_eth_dev_info_get(port, &info);
	if (r != 0)
		return r;
	snprintf(out->driver, sizeof(out->driver), "%s", info.driver_name ? info.driver_name : "?");
	r = rte_eth_dev_get_name_by_port(port, out->name);
	if (r != 0)
		snprintf(out->name, sizeof(out->name), "port %u", port);
	return 0;
}

int cv_port_stats(uint16_t port, uint64_t out[CV_STATS])
{
	struct rte_eth_stats s;
	int r = rte_eth_stats_get(port, &s);
	if (r != 0)
		return r;
	out[CV_STAT_IPACKETS] = s.ipackets;
	out[CV_STAT_OPACKETS] = s.opackets;
	out[CV_STAT_IMISSED] = s.imissed;
	out[CV_STAT_IERRORS] = s.ierrors;
	out[CV_STAT_OERRORS] = s.oerrors;
	out[CV_STAT_RX_NOMBUF] = s.rx_nombuf;
	return 0;
}

int cv_ring_link(const char *a, const char *b, uint16_t *port_a, uint16_t *port_b)
{
	/* Ring names are short (RTE_RING_NAMESIZE): numbered, not named after the ports. */
	static unsigned links;
	char n[RTE_RING_NAMESIZE];
	struct rte_ring *ab, *ba;
	int pa, pb;
	unsigned link = __atomic_fetch_add(&links, 1, __ATOMIC_RELAXED);

	snprintf(n, sizeof(n), "cv-link%u-ab", link);
	ab = rte_ring_create(n, 4096, rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ);
	snprintf(n, sizeof(n), "cv-link%u-ba", link);
	ba = rte_ring_create(n, 4096, rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ);
	if (ab == NULL || ba == NULL)
		return -rte_errno;
	pa = rte_eth_from_rings(a, &ba, 1, &ab, 1, rte_socket_id());
	pb = rte_eth_from_rings(b, &ab, 1, &ba, 1, rte_socket_id());
	if (pa < 0 || pb < 0)
		return -rte_errno;
	*port_a = (uint16_t)pa;
	*port_b = (uint16_t)pb;
	return 0;
}
