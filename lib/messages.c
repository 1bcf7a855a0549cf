#include "build-config.h"

#include "messages.h"

#include <errno.h>

/* Field names: here and nowhere else (master-interface.h documents them). */
#define F_PID "pid"
#define F_VERSION "version"
#define F_ABI "abi"
#define F_ENDPOINT "endpoint"
#define F_HEALTHY "healthy"
#define F_REASON "reason"
#define F_STATE "state"
#define F_COUNTERS "counters"
#define F_CERTIFICATES "certificates"
#define F_CONFIG "config"
#define F_ID "id"
#define F_OP "op"
#define F_CN "cn"
#define F_OUT "out"
#define F_OK "ok"
#define F_ERROR "error"
#define F_RESULT "result"
#define F_GRACEFUL "graceful"
#define F_POLICY "policy"

/* ---- reading: absent is the default, the wrong type is a protocol error ---------------- */

static int get_str(const cJSON *p, const char *key, const char **out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, key);

	*out = NULL;
	if (v == NULL || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsString(v))
		return -EPROTO;
	*out = v->valuestring;
	return 0;
}

static int get_bool(const cJSON *p, const char *key, int *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, key);

	*out = 0;
	if (v == NULL)
		return 0;
	if (!cJSON_IsBool(v))
		return -EPROTO;
	*out = cJSON_IsTrue(v);
	return 0;
}

static int get_int(const cJSON *p, const char *key, int64_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, key);

	*out = 0;
	if (v == NULL)
		return 0;
	if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble)
		return -EPROTO;
	*out = (int64_t)v->valuedouble;
	return 0;
}

/* An object (want_array 0) or an array (1); absent or null is NULL. */
static int get_json(const cJSON *p, const char *key, int want_array, const cJSON **out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, key);

	*out = NULL;
	if (v == NULL || cJSON_IsNull(v))
		return 0;
	if (want_array ? !cJSON_IsArray(v) : !cJSON_IsObject(v))
		return -EPROTO;
	*out = v;
	return 0;
}

static int check_object(const cJSON *p)
{
	return cJSON_IsObject(p) ? 0 : -EPROTO;
}

/* ---- writing ------------------------------------------------------------------------------ */

static void put_str(cJSON *o, const char *key, const char *value)
{
	if (value != NULL)
		cJSON_AddStringToObject(o, key, value);
}

static void put_json(cJSON *o, const char *key, const cJSON *value)
{
	if (value != NULL)
		cJSON_AddItemToObject(o, key, cJSON_Duplicate(value, 1));
}

/* ---- the messages ------------------------------------------------------------------------- */

cJSON *ep_msg_hello_encode(const struct ep_msg_hello *m)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddNumberToObject(o, F_PID, (double)m->pid);
	put_str(o, F_VERSION, m->version);
	cJSON_AddNumberToObject(o, F_ABI, m->abi);
	return o;
}

int ep_msg_hello_parse(const cJSON *p, struct ep_msg_hello *m)
{
	int64_t abi;

	if (check_object(p) < 0 || get_int(p, F_PID, &m->pid) < 0 ||
	    get_str(p, F_VERSION, &m->version) < 0 || get_int(p, F_ABI, &abi) < 0 || abi < 0 ||
	    abi > UINT32_MAX)
		return -EPROTO;
	m->abi = (uint32_t)abi;
	return 0;
}

cJSON *ep_msg_ready_encode(const struct ep_msg_ready *m)
{
	cJSON *o = cJSON_CreateObject();

	put_str(o, F_ENDPOINT, m->endpoint);
	return o;
}

int ep_msg_ready_parse(const cJSON *p, struct ep_msg_ready *m)
{
	return check_object(p) < 0 || get_str(p, F_ENDPOINT, &m->endpoint) < 0 ? -EPROTO : 0;
}

cJSON *ep_msg_health_encode(const struct ep_msg_health *m)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddBoolToObject(o, F_HEALTHY, m->healthy);
	put_str(o, F_REASON, m->reason);
	return o;
}

int ep_msg_health_parse(const cJSON *p, struct ep_msg_health *m)
{
	return check_object(p) < 0 || get_bool(p, F_HEALTHY, &m->healthy) < 0 ||
			       get_str(p, F_REASON, &m->reason) < 0
		       ? -EPROTO
		       : 0;
}

cJSON *ep_msg_status_encode(const struct ep_msg_status *m)
{
	cJSON *o = cJSON_CreateObject();

	put_str(o, F_STATE, m->state);
	cJSON_AddBoolToObject(o, F_HEALTHY, m->healthy);
	put_json(o, F_COUNTERS, m->counters);
	put_json(o, F_CERTIFICATES, m->certificates);
	return o;
}

int ep_msg_status_parse(const cJSON *p, struct ep_msg_status *m)
{
	return check_object(p) < 0 || get_str(p, F_STATE, &m->state) < 0 ||
			       get_bool(p, F_HEALTHY, &m->healthy) < 0 ||
			       get_json(p, F_COUNTERS, 0, &m->counters) < 0 ||
			       get_json(p, F_CERTIFICATES, 1, &m->certificates) < 0
		       ? -EPROTO
		       : 0;
}

cJSON *ep_msg_fatal_encode(const struct ep_msg_fatal *m)
{
	cJSON *o = cJSON_CreateObject();

	put_str(o, F_REASON, m->reason);
	cJSON_AddBoolToObject(o, F_CONFIG, m->config);
	return o;
}

int ep_msg_fatal_parse(const cJSON *p, struct ep_msg_fatal *m)
{
	return check_object(p) < 0 || get_str(p, F_REASON, &m->reason) < 0 ||
			       get_bool(p, F_CONFIG, &m->config) < 0
		       ? -EPROTO
		       : 0;
}

cJSON *ep_msg_certs_req_encode(const struct ep_msg_certs_req *m)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddNumberToObject(o, F_ID, (double)m->id);
	put_str(o, F_OP, m->op);
	put_str(o, F_CN, m->cn);
	put_str(o, F_OUT, m->out);
	return o;
}

int ep_msg_certs_req_parse(const cJSON *p, struct ep_msg_certs_req *m)
{
	return check_object(p) < 0 || get_int(p, F_ID, &m->id) < 0 ||
			       get_str(p, F_OP, &m->op) < 0 || get_str(p, F_CN, &m->cn) < 0 ||
			       get_str(p, F_OUT, &m->out) < 0
		       ? -EPROTO
		       : 0;
}

cJSON *ep_msg_certs_reply_encode(const struct ep_msg_certs_reply *m)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddNumberToObject(o, F_ID, (double)m->id);
	cJSON_AddBoolToObject(o, F_OK, m->ok);
	put_str(o, F_ERROR, m->error);
	put_json(o, F_RESULT, m->result);
	return o;
}

int ep_msg_certs_reply_parse(const cJSON *p, struct ep_msg_certs_reply *m)
{
	return check_object(p) < 0 || get_int(p, F_ID, &m->id) < 0 ||
			       get_bool(p, F_OK, &m->ok) < 0 || get_str(p, F_ERROR, &m->error) < 0 ||
			       get_json(p, F_RESULT, 0, &m->result) < 0
		       ? -EPROTO
		       : 0;
}

cJSON *ep_msg_stop_encode(const struct ep_msg_stop *m)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddBoolToObject(o, F_GRACEFUL, m->graceful);
	return o;
}

int ep_msg_stop_parse(const cJSON *p, struct ep_msg_stop *m)
{
	return check_object(p) < 0 || get_bool(p, F_GRACEFUL, &m->graceful) < 0 ? -EPROTO : 0;
}

cJSON *ep_msg_policy_encode(const struct ep_msg_policy *m)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddItemToObject(o, F_POLICY, m->policy != NULL ? cJSON_Duplicate(m->policy, 1)
							     : cJSON_CreateObject());
	return o;
}

/* The policy is required: a POLICY without one would silently drop every limit. */
int ep_msg_policy_parse(const cJSON *p, struct ep_msg_policy *m)
{
	if (check_object(p) < 0 || get_json(p, F_POLICY, 0, &m->policy) < 0 || m->policy == NULL)
		return -EPROTO;
	return 0;
}
