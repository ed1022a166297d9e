//! The domain's ids and quantities as database columns: a value read from a row goes
//! through the same parsing as one read from a request, so a corrupt row fails its
//! decode (an item error) instead of travelling on as a string; a value bound to a
//! statement is written as its text or number.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use crate::domain::{IdempotencyKey, OrderId, ProductId, Quantity, UserId};

/// Reads `$ty` from a column of `$raw` through `$parse`, and writes it as `$write`.
macro_rules! column {
    ($ty:ty, $raw:ty, $parse:expr, $write:expr) => {
        impl<'q, DB: Database> Encode<'q, DB> for $ty
        where
            $raw: Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                let raw: $raw = $write(self);
                raw.encode_by_ref(buf)
            }
        }

        impl<DB: Database> Type<DB> for $ty
        where
            $raw: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <$raw as Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <$raw as Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $ty
        where
            $raw: Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let raw = <$raw as Decode<'r, DB>>::decode(value)?;
                Ok($parse(raw)?)
            }
        }
    };
}

column!(
    UserId,
    String,
    |raw: String| UserId::parse(&raw),
    |v: &UserId| v.to_string()
);
column!(
    OrderId,
    String,
    |raw: String| OrderId::parse(&raw),
    |v: &OrderId| v.to_string()
);
column!(
    IdempotencyKey,
    String,
    |raw: String| IdempotencyKey::parse(&raw),
    |v: &IdempotencyKey| v.as_str().to_string()
);
column!(ProductId, i64, ProductId::try_from, |v: &ProductId| v.get());
column!(Quantity, i64, Quantity::try_from, |v: &Quantity| v.units());
