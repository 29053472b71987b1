WITH source_rows AS 
(SELECT contact_events.customer_id AS customer_id, contact_events.occurred_at AS at, 0.0 AS amount 
FROM contact_events 
WHERE contact_events.occurred_at < TIMESTAMP '2024-07-01 00:00:00' AND contact_events.occurred_at >= TIMESTAMP '2023-07-02 00:00:00'), 
metrics AS 
(SELECT source_rows.customer_id AS customer_id, max(source_rows.at) AS last_at, count(*) AS frequency, sum(source_rows.amount) AS monetary 
FROM source_rows GROUP BY source_rows.customer_id), 
final AS 
(SELECT CAST(metrics.customer_id AS VARCHAR) AS customer_id, date_diff('day', CAST(metrics.last_at AS DATE), DATE '2024-06-30') AS recency_days, CAST(metrics.frequency AS INTEGER) AS frequency, CAST(coalesce(metrics.monetary, 0.0) AS DOUBLE) AS monetary 
FROM metrics)
 SELECT final.customer_id, final.recency_days, final.frequency, final.monetary 
FROM final;

SELECT count(*) AS customers, sum(CASE WHEN (rfm_metrics.frequency < 2.0) THEN 1 ELSE 0 END) AS f_bin1, sum(CASE WHEN (rfm_metrics.frequency >= 2.0 AND rfm_metrics.frequency < 4.0) THEN 1 ELSE 0 END) AS f_bin2, sum(CASE WHEN (rfm_metrics.frequency >= 4.0) THEN 1 ELSE 0 END) AS f_bin3, CAST(avg(rfm_metrics.frequency) AS DOUBLE) AS f_mean, min(rfm_metrics.frequency) AS f_min, max(rfm_metrics.frequency) AS f_max 
FROM rfm_metrics;

SELECT DATE '2024-06-30' AS as_of, 'contact_bands' AS scheme, scored.customer_id, scored.recency_days, scored.frequency, scored.monetary, scored.r_score, scored.f_score, scored.m_score, CASE WHEN (scored.f_score BETWEEN 3 AND 3) THEN '4+ contacts' WHEN (scored.f_score BETWEEN 2 AND 2) THEN '2-3 contacts' WHEN (scored.f_score BETWEEN 1 AND 1) THEN '1 contact' ELSE '' END AS segment 
FROM (SELECT rfm_metrics.customer_id AS customer_id, rfm_metrics.recency_days AS recency_days, rfm_metrics.frequency AS frequency, rfm_metrics.monetary AS monetary, 0 AS r_score, CAST(1 + CASE WHEN (rfm_metrics.frequency >= 2.5) THEN 1 ELSE 0 END AS INTEGER) AS f_score, 0 AS m_score 
FROM rfm_metrics) AS scored;

