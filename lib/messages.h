/*
 * The messages of master-interface.h as C structs, with one encoder and one
 * parser each, used by both ends: the field names exist only here.
 *
 * The rule for changing a message: add fields, never repurpose or remove one.
 * A parser ignores fields it does not know and gives every field it knows a
 * default when it is absent, so that a supervisor and a worker of
 * neighbouring versions (a worker still running after an upgrade) keep
 * understanding each other; a field of the wrong type is a protocol error.
 *
 * Strings and JSON values a parser returns point into the payload: valid as
 * long as the payload is.  CONFIGURE (built by ep_worker_config_build() in
 * config.c, read by the worker) and the control socket's CTL_REQUEST/REPLY
 * carry whole configuration objects and are described beside their code.
 */
#ifndef EP_MESSAGES_H
#define EP_MESSAGES_H

#include <stdint.h>
#include <cjson/cJSON.h>

/* HELLO, worker -> supervisor: the first frame. */
struct ep_msg_hello {
	int64_t pid;
	const char *version; /* PACKAGE_VERSION of the worker; NULL when absent */
	uint32_t abi;        /* EP_PLUGIN_ABI_VERSION of the worker */
};

/* READY, worker -> supervisor: the endpoint answers. */
struct ep_msg_ready {
	const char *endpoint; /* NULL when absent */
};

/* HEALTH, worker -> supervisor: on every change. */
struct ep_msg_health {
	int healthy;
	const char *reason; /* why it is unhealthy; NULL when absent */
};

/* STATUS, worker -> supervisor. */
struct ep_msg_status {
	const char *state;          /* "starting" or "ready" */
	int healthy;
	const cJSON *counters;      /* the backend's counters object, or NULL */
	const cJSON *certificates;  /* the certificate source's describe() array, or NULL */
};

/* FATAL, worker -> supervisor: just before exiting. */
struct ep_msg_fatal {
	const char *reason; /* NULL when absent */
	int config;         /* 1: a fatal configuration error, not retried */
};

/* CERTS_REQ, supervisor -> worker: etcdproxyctl rotate / issue-client-cert. */
struct ep_msg_certs_req {
	int64_t id;
	const char *op;  /* "rotate" or "issue" */
	const char *cn;  /* issue: the common name */
	const char *out; /* issue: the absolute output directory */
};

/* CERTS_REPLY, worker -> supervisor: the answer to CERTS_REQ id. */
struct ep_msg_certs_reply {
	int64_t id;
	int ok;
	const char *error;    /* when !ok */
	const cJSON *result;  /* issue: what was issued, or NULL */
};

/* STOP, supervisor -> worker. */
struct ep_msg_stop {
	int graceful;
};

/*
 * Encoders return a new JSON object (the caller sends and frees it; a JSON
 * value in the struct is copied).  Parsers return 0, or -EPROTO when a field
 * has the wrong type or payload is not an object.
 */
cJSON *ep_msg_hello_encode(const struct ep_msg_hello *m);
int ep_msg_hello_parse(const cJSON *payload, struct ep_msg_hello *m);
cJSON *ep_msg_ready_encode(const struct ep_msg_ready *m);
int ep_msg_ready_parse(const cJSON *payload, struct ep_msg_ready *m);
cJSON *ep_msg_health_encode(const struct ep_msg_health *m);
int ep_msg_health_parse(const cJSON *payload, struct ep_msg_health *m);
cJSON *ep_msg_status_encode(const struct ep_msg_status *m);
int ep_msg_status_parse(const cJSON *payload, struct ep_msg_status *m);
cJSON *ep_msg_fatal_encode(const struct ep_msg_fatal *m);
int ep_msg_fatal_parse(const cJSON *payload, struct ep_msg_fatal *m);
cJSON *ep_msg_certs_req_encode(const struct ep_msg_certs_req *m);
int ep_msg_certs_req_parse(const cJSON *payload, struct ep_msg_certs_req *m);
cJSON *ep_msg_certs_reply_encode(const struct ep_msg_certs_reply *m);
int ep_msg_certs_reply_parse(const cJSON *payload, struct ep_msg_certs_reply *m);
/* POLICY, supervisor -> worker: the tenant's new policy object. */
struct ep_msg_policy {
	const cJSON *policy;
};

cJSON *ep_msg_stop_encode(const struct ep_msg_stop *m);
int ep_msg_stop_parse(const cJSON *payload, struct ep_msg_stop *m);
cJSON *ep_msg_policy_encode(const struct ep_msg_policy *m);
int ep_msg_policy_parse(const cJSON *payload, struct ep_msg_policy *m);

#endif /* EP_MESSAGES_H */
