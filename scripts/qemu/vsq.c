/* vsq: the two ethtool operations the QEMU test guests need and busybox lacks.
 *
 *   vsq IFACE channels N   set the combined channel count (ethtool -L IFACE combined N);
 *                          prints "max=M before=B after=A"
 *   vsq IFACE stats        the driver's statistics (ethtool -S IFACE) on one line:
 *                          "name=value name=value ..."
 *
 * Built statically by scripts/qemu/build-initramfs.sh for the guest's initramfs. */
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int fd;
static struct ifreq ifr;

static int eth(void *cmd)
{
	ifr.ifr_data = cmd;
	return ioctl(fd, SIOCETHTOOL, &ifr);
}

static int channels(int n)
{
	struct ethtool_channels ch = { .cmd = ETHTOOL_GCHANNELS };
	if (eth(&ch) < 0) {
		perror("ETHTOOL_GCHANNELS");
		return 1;
	}
	unsigned before = ch.combined_count;
	ch.cmd = ETHTOOL_SCHANNELS;
	ch.combined_count = n;
	if (before != (unsigned)n && eth(&ch) < 0) {
		perror("ETHTOOL_SCHANNELS");
		return 1;
	}
	ch.cmd = ETHTOOL_GCHANNELS;
	if (eth(&ch) < 0) {
		perror("ETHTOOL_GCHANNELS");
		return 1;
	}
	printf("max=%u before=%u after=%u\n", ch.max_combined, before, ch.combined_count);
	return ch.combined_count == (unsigned)n ? 0 : 1;
}

static int stats(void)
{
	struct {
		struct ethtool_sset_info hdr;
		__u32 len;
	} info = { .hdr = { .cmd = ETHTOOL_GSSET_INFO, .sset_mask = 1ULL << ETH_SS_STATS } };
	if (eth(&info) < 0) {
		perror("ETHTOOL_GSSET_INFO");
		return 1;
	}
	__u32 n = info.hdr.sset_mask ? info.len : 0;
	struct ethtool_gstrings *names = calloc(1, sizeof(*names) + n * ETH_GSTRING_LEN);
	struct ethtool_stats *vals = calloc(1, sizeof(*vals) + n * sizeof(__u64));
	if (!names || !vals)
		return 1;
	names->cmd = ETHTOOL_GSTRINGS;
	names->string_set = ETH_SS_STATS;
	names->len = n;
	vals->cmd = ETHTOOL_GSTATS;
	vals->n_stats = n;
	if (eth(names) < 0 || eth(vals) < 0) {
		perror("ETHTOOL_GSTRINGS/GSTATS");
		return 1;
	}
	for (__u32 i = 0; i < n; i++) {
		char name[ETH_GSTRING_LEN + 1];
		memcpy(name, names->data + i * ETH_GSTRING_LEN, ETH_GSTRING_LEN);
		name[ETH_GSTRING_LEN] = 0;
		for (char *c = name; *c; c++)
			if (*c == ' ' || *c == '=')
				*c = '_';
		printf("%s%s=%llu", i ? " " : "", name, (unsigned long long)vals->data[i]);
	}
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: vsq IFACE channels N | vsq IFACE stats\n");
		return 2;
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
	if (!strcmp(argv[2], "channels") && argc == 4)
		return channels(atoi(argv[3]));
	if (!strcmp(argv[2], "stats"))
		return stats();
	fprintf(stderr, "vsq: unknown command %s\n", argv[2]);
	return 2;
}
