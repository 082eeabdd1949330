-- When approvers were reminded that a pending approval is about to expire (once per approval).
ALTER TABLE approvals ADD COLUMN reminded_at timestamptz;
