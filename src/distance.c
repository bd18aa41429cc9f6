/* PLACEHOLDER: replaced by the module's owner */
typedef int ann_placeholder_distance;
