-- Customers, products and orders. Each record is stored whole, in the shape of schemas/crm.py
-- (the reference store's shape), and the columns we look records up by are generated from it,
-- so they cannot drift from the record. `position` keeps the order of the loaded file.
CREATE TABLE customers (
    customer_id text PRIMARY KEY,
    position    integer NOT NULL,
    record      jsonb NOT NULL CHECK (record->>'customer_id' = customer_id),
    email       text GENERATED ALWAYS AS (lower(record->>'email')) STORED,
    first_name  text GENERATED ALWAYS AS (lower(record->'name'->>'first_name')) STORED,
    last_name   text GENERATED ALWAYS AS (lower(record->'name'->>'last_name')) STORED,
    zip         text GENERATED ALWAYS AS (record->'address'->>'zip') STORED,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_email ON customers (email, position);
CREATE INDEX customers_name_zip ON customers (last_name, first_name, zip, position);

CREATE TABLE products (
    product_id text PRIMARY KEY,
    position   integer NOT NULL,
    record     jsonb NOT NULL CHECK (record->>'product_id' = product_id),
    name       text GENERATED ALWAYS AS (record->>'name') STORED,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- get_item finds the product holding a variant: `record->'variants' ? item_id`.
CREATE INDEX products_variants ON products USING gin ((record->'variants'));

CREATE TABLE orders (
    order_id    text PRIMARY KEY,
    position    integer NOT NULL,
    record      jsonb NOT NULL CHECK (record->>'order_id' = order_id),
    customer_id text GENERATED ALWAYS AS (record->>'customer_id') STORED
                REFERENCES customers (customer_id),
    status      text GENERATED ALWAYS AS (record->>'status') STORED CHECK (status IN (
                    'processed', 'pending', 'pending (item modified)', 'delivered',
                    'cancelled', 'exchange requested', 'return requested')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id, position);

-- The support policy loaded with the store (served as crm://policy). One row.
CREATE TABLE policy (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    text       text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
