/*
 * Where the native backend records which leases belong to which tenant, in
 * the core etcd: one key per lease, attached to the lease itself (so that a
 * revoked or expired lease takes its record along), with an empty value:
 *
 *   /__etcdproxy/leases/<tenant>/<lease ID as 16 lower-case hex digits>
 *
 * The backend writes and reads them (plugins/backend-native/leases.c);
 * etcdproxyctl's import writes them for the leases it grants, and purge
 * revokes every lease they name.
 */
#ifndef EP_LEASE_RECORDS_H
#define EP_LEASE_RECORDS_H

#include "etcdproxy/plugin.h"

#define EP_LEASE_RECORDS EP_OWN_PREFIX "leases/"
#define EP_LEASE_RECORD_FMT EP_LEASE_RECORDS "%s/%016" PRIx64 /* tenant, (uint64_t)ID */

#endif /* EP_LEASE_RECORDS_H */
