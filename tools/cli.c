/* PLACEHOLDER */
typedef int ann_placeholder_cli;
